"""`streamvec produce synthetic` publishes exactly what it reports, and stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from ingest import admin, record
from ingest.spec import CollectionSpec
from streamvec.settings import Settings
from tests.support.polling import wait_until
from tests.support.topics import read_topic

pytestmark = pytest.mark.integration

DIM = 8


def read_rows(settings: Settings, topic: str) -> list[tuple[str, np.ndarray, dict | None]]:
    """Every row of `topic` up to the high watermarks: (id, vector, metadata)."""
    rows: list[tuple[str, np.ndarray, dict | None]] = []
    for msg in read_topic(settings, topic):
        batch = record.decode(msg.value())
        ids = [raw.decode() for raw in batch.ids.tolist()]
        rows.extend(zip(ids, batch.vectors.copy(), batch.metadata_list(), strict=True))
    return rows


def produce(settings: Settings, collection: str, *options: str) -> subprocess.Popen:
    """Start `streamvec produce synthetic` for `collection`."""
    argv = [sys.executable, "-m", "streamvec", "produce", "synthetic", "--collection",
            collection, *options]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=settings.child_env())


@pytest.fixture
def spec(settings, collection_name) -> CollectionSpec:
    """A collection of dimension DIM over three partitions."""
    made = CollectionSpec(collection_name, dim=DIM, partitions=3)
    admin.create_collection(settings, made)
    return made


def test_a_counted_run_publishes_exactly_count_rows_over_the_id_space(settings, spec):
    proc = produce(settings, spec.name, "--count", "250", "--batch", "40", "--rate", "0",
                   "--id-space", "200", "--clusters", "4", "--seed", "3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert re.fullmatch(rf"published 250 rows to {spec.collection.topic} in \S+s "
                        r"\(\S+ rows/s\); last offsets \{.*\}\n", out), out
    rows = read_rows(settings, spec.collection.topic)
    ids = [r[0] for r in rows]
    assert len(rows) == 250
    assert set(ids) == {f"syn-{i}" for i in range(200)}
    assert sorted(ids).count("syn-0") == 2 and sorted(ids).count("syn-199") == 1
    norms = np.linalg.norm(np.stack([r[1] for r in rows]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert {m["cluster"] for m in (r[2] for r in rows)} == {0, 1, 2, 3}


def test_sigterm_stops_an_endless_run_with_everything_reported_delivered(settings, spec):
    proc = produce(settings, spec.name, "--rate", "500", "--batch", "25")
    topic = spec.collection.topic

    def published() -> int:
        return sum(p.high for p in admin.partition_offsets(settings, topic))

    wait_until(lambda: published() > 0 or proc.poll() is not None, timeout=60,
               what="the first messages")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    sent = int(re.match(r"published (\d+) rows", out).group(1))
    assert sent > 0 and sent % 25 == 0
    assert len(read_rows(settings, topic)) == sent


def test_bad_flags_are_refused_before_connecting(settings, collection_name):
    proc = produce(settings, collection_name, "--rate", "-1", "--batch", "0")
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (
        2, "streamvec: error: --rate must be a number >= 0; --batch must be >= 1\n")
