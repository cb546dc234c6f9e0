"""Collection spec validation and its JSON form."""

from __future__ import annotations

import pytest

from ingest.errors import InvalidName, SpecError
from ingest.spec import CollectionSpec


def test_json_round_trip_and_unknown_fields_ignored():
    spec = CollectionSpec("products@v4", dim=384, metric="cosine", partitions=8, index="HNSW32")
    assert spec.model_version == "v4"
    assert CollectionSpec.from_json(spec.to_json()) == spec
    assert CollectionSpec.from_json(spec.to_json()[:-1] + ',"future":1}') == spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim must be 1..65536"),
        ({"dim": 65537}, "dim must be 1..65536"),
        ({"dim": 4, "metric": "hamming"}, "metric must be one of l2, ip, cosine"),
        ({"dim": 4, "partitions": 0}, "partitions must be 1..1024"),
        ({"dim": 4, "seal_rows": 0}, "seal_rows must be >= 1"),
        ({"dim": 4, "seal_seconds": 0}, "seal_seconds must be > 0"),
        ({"dim": 4, "index": " "}, "index must be 'auto'"),
    ],
)
def test_out_of_range_fields_are_refused(kwargs, message):
    with pytest.raises(SpecError, match=message):
        CollectionSpec("c", **kwargs)


def test_model_version_must_agree_with_the_name():
    with pytest.raises(SpecError, match="contradicts the name 'c@v1'"):
        CollectionSpec("c@v1", dim=4, model_version="v2")
    assert CollectionSpec("c", dim=4, model_version="m7").model_version == "m7"


def test_corrupt_stored_spec_is_a_clear_error():
    with pytest.raises(SpecError, match="not valid JSON"):
        CollectionSpec.from_json(b"{nope")
    with pytest.raises(SpecError, match="not a JSON object"):
        CollectionSpec.from_json(b"[1]")


def test_a_restored_collection_is_read_only_and_names_a_valid_source():
    spec = CollectionSpec("copy", dim=4, restored_from="products@v4")
    assert spec.read_only and not CollectionSpec("products", dim=4).read_only
    assert CollectionSpec.from_json(spec.to_json()) == spec
    with pytest.raises(InvalidName, match="'Not A Name'"):
        CollectionSpec("copy", dim=4, restored_from="Not A Name")


def test_new_collections_use_kafkas_partitioner_and_stored_specs_without_one_read_as_streamvec():
    assert CollectionSpec("c", dim=4).partitioner == "kafka"
    legacy = CollectionSpec("c", dim=4, partitioner="streamvec")
    assert CollectionSpec.from_json(legacy.to_json()) == legacy
    assert CollectionSpec.from_json(CollectionSpec("c", dim=4).to_json()).partitioner == "kafka"
    stored_before = '{"dim":4,"index":"auto","metric":"l2","name":"c","partitions":4}'
    assert CollectionSpec.from_json(stored_before).partitioner == "streamvec"
    with pytest.raises(SpecError, match="partitioner must be one of kafka, streamvec"):
        CollectionSpec("c", dim=4, partitioner="crc32")
