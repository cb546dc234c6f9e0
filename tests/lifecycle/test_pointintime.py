"""Point-in-time snapshot records that the garbage collector reads: format, labels, specs."""

from __future__ import annotations

import json
import re

import pytest

from indexer.registry import SegmentRecord
from ingest.spec import CollectionSpec
from lifecycle.errors import PointInTimeError
from lifecycle.pointintime import PointInTime
from lifecycle.snapshots import check_label, new_id, target_spec


def pit(spec: CollectionSpec) -> PointInTime:
    records = (SegmentRecord("p0001-000000000000-000000000010", 1, 0, 10, 9, 2,
                             "src/g0002/p0001/p0001-000000000000-000000000010", "Flat", 1.5),
               SegmentRecord("p0000-000000000000-000000000004", 0, 0, 4, 4, 2,
                             "src/g0002/p0000/p0000-000000000000-000000000004", "Flat", 1.0))
    return PointInTime("s", spec.name, 12.5, "ann", 7, 2, json.loads(spec.to_json()),
                       {0: 4, 1: 10}, records, {"generation": 2, "index": "Flat"})


def test_round_trip_sorts_records_and_counts():
    original = pit(CollectionSpec("src", dim=4))
    back = PointInTime.from_json("s", original.to_json())
    assert back.records == tuple(sorted(original.records, key=lambda r: r.partition))
    assert (back.segments, back.rows, back.checkpoints) == (2, 13, {0: 4, 1: 10})
    assert back.summary() == {"id": "s", "collection": "src", "created_at": 12.5,
                              "actor": "ann", "version": 7, "generation": 2, "segments": 2,
                              "rows": 13, "checkpoints": {"0": 4, "1": 10}}
    assert back.generation_info == {"generation": 2, "index": "Flat"}


@pytest.mark.parametrize(("text", "why"), [
    ("not json", "Expecting value"),
    ('{"format": 9}', "unknown format 9"),
    ('{"format": 1}', "'segments'"),
])
def test_unreadable_snapshots_name_themselves(text, why):
    with pytest.raises(PointInTimeError, match=rf"snapshot 'bad' is unreadable: .*{why}"):
        PointInTime.from_json("bad", text)


@pytest.mark.parametrize("label", ["v1", "Before-Migration_2.0", "a" * 64])
def test_good_labels(label):
    assert check_label(label) == label


@pytest.mark.parametrize("label", ["", "latest", "-x", ".x", "a b", "a/b", "a" * 65, "é"])
def test_bad_labels(label):
    with pytest.raises(PointInTimeError, match="invalid snapshot label"):
        check_label(label)


def test_new_ids_are_utc_times_with_a_random_tail():
    made = new_id(1795000000.0)
    assert re.fullmatch(r"20261118T110640Z-[0-9a-f]{4}", made), made
    assert check_label(made) == made


def test_target_spec_renames_and_keeps_the_model_version():
    versioned = pit(CollectionSpec("src@v3", dim=4, partitions=2, index="Flat"))
    assert target_spec(versioned, "copy") == CollectionSpec(
        "copy", dim=4, partitions=2, index="Flat", model_version="v3", restored_from="src@v3")
    assert target_spec(versioned, "copy@v3").model_version == "v3"
    with pytest.raises(PointInTimeError, match=r"restore as copy@v3 or as an unversioned name"):
        target_spec(versioned, "copy@v4")
    plain = pit(CollectionSpec("src", dim=4))
    assert target_spec(plain, "copy@v9").model_version == "v9"
