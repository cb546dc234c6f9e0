"""The object-store mirror of the snapshot folder over a `file://` store: paths, order, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from pydantic import ValidationError

from indexer import remote, segfolder, store
from indexer.errors import CorruptSegment, RemoteStoreError
from indexer.segment import SealedRows
from streamvec.settings import Settings, redact_storage_options

DIM = 4
COLLECTION = "docs@v2"
SECRET = "n0t-a-real-s3cret"  # noqa: S105 - must never show up in text


def write_segment(root: Path, partition: int = 1, start: int = 0, end: int = 10
                  ) -> segfolder.SegmentManifest:
    """Write one small seeded segment folder under `root`."""
    rng = np.random.default_rng(start)
    rows = end - start
    sealed = SealedRows(
        partition=partition, start_offset=start, end_offset=end,
        ids=np.array([f"id-{start + i}".encode() for i in range(rows)]),
        vectors=rng.standard_normal((rows, DIM)).astype(np.float32),
        offsets=np.arange(start, end, dtype=np.int64),
        event_time_ms=np.arange(start, end, dtype=np.int64), metadata=[b""] * rows,
        deleted_ids=np.zeros(0, dtype="S1"))
    index = faiss.IndexFlatL2(DIM)
    index.add(sealed.vectors)
    return segfolder.write_segment(root, COLLECTION, 0, sealed, index, "Flat", "l2", {})


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def objects(tmp_path: Path) -> remote.RemoteStore:
    """A store whose 'bucket' is a local folder: the same code path as s3://, no server."""
    return remote.RemoteStore(f"file://{tmp_path / 'bucket'}/prefix")


def test_registry_paths_must_stay_inside_the_store() -> None:
    good = "docs@v2/g0000/p0001/p0001-000000000000-000000000010"
    assert remote.check_rel_path(good) == good
    assert remote.check_rel_path(Path(good)) == good
    for bad in ("", "/etc/passwd", "../x", "docs/../../x", "a//b", "a/./b", "a\\b", "."):
        with pytest.raises(ValueError, match="is not a path relative to the snapshot store"):
            remote.check_rel_path(bad)


def test_remote_paths_mirror_the_local_layout(tmp_path: Path, objects) -> None:
    manifest = write_segment(tmp_path / "local")
    rel = remote.rel_path(manifest)
    assert rel == "docs@v2/g0000/p0001/p0001-000000000000-000000000010"
    assert objects.key(rel) == f"{tmp_path}/bucket/prefix/{rel}"
    assert (tmp_path / "local" / rel).is_dir()


def test_push_then_fetch_is_byte_identical_and_idempotent(tmp_path: Path, objects) -> None:
    local = tmp_path / "local"
    manifest = write_segment(local)
    rel = remote.rel_path(manifest)
    assert objects.push_segment(local, manifest) is True
    assert objects.push_segment(local, manifest) is False  # same manifest there: nothing to do
    assert objects.is_complete(rel) and not objects.is_registered(rel)
    assert objects.push_marker(rel) and objects.is_registered(rel)
    fetched = objects.fetch(rel, tmp_path / "other")
    assert fetched == tmp_path / "other" / rel
    assert files_of(fetched) == files_of(local / rel)
    assert objects.fetch_marker(rel, tmp_path / "other") and store.is_registered(fetched)
    assert sorted(os.listdir(fetched.parent)) == [fetched.name, fetched.name + ".registered"]


def test_listing_orders_by_generation_partition_and_start(tmp_path: Path, objects) -> None:
    local = tmp_path / "local"
    made = [write_segment(local, p, s, s + 5) for p, s in ((2, 0), (1, 5), (1, 0))]
    for manifest in made:
        objects.push_segment(local, manifest)
    assert objects.list_segments(COLLECTION, 0) == [
        f"{COLLECTION}/g0000/p0001/p0001-000000000000-000000000005",
        f"{COLLECTION}/g0000/p0001/p0001-000000000005-000000000010",
        f"{COLLECTION}/g0000/p0002/p0002-000000000000-000000000005"]
    assert objects.list_segments(COLLECTION) == objects.list_segments(COLLECTION, 0)
    assert objects.list_segments(COLLECTION, 3) == [] and objects.list_segments("nothing") == []
    first = remote.rel_path(made[2])
    objects.push_marker(first)
    objects.remove(first)
    assert not objects.is_registered(first) and not objects.is_complete(first)
    assert len(objects.list_segments(COLLECTION, 0)) == 2


def test_an_incomplete_or_corrupt_remote_folder_is_never_installed(tmp_path: Path,
                                                                   objects) -> None:
    local = tmp_path / "local"
    manifest = write_segment(local)
    rel = remote.rel_path(manifest)
    objects.push_segment(local, manifest)
    key = objects.key(rel)
    objects.fs.pipe_file(f"{key}/ids.npy", b"tampered")
    with pytest.raises(CorruptSegment) as corrupt:
        objects.fetch(rel, tmp_path / "other")
    assert (corrupt.value.file, corrupt.value.reason) == (
        "ids.npy", f"{len(b'tampered')} bytes, the manifest says "
                   f"{manifest.files['ids.npy']['bytes']}")
    assert str(corrupt.value).startswith(f"segment {objects.url}/{rel} is corrupt: ids.npy")
    objects.fs.rm_file(f"{key}/manifest.json")
    with pytest.raises(CorruptSegment, match="manifest.json: missing .an incomplete upload"):
        objects.fetch(rel, tmp_path / "other")
    partition = tmp_path / "other" / rel.rsplit("/", 1)[0]
    assert os.listdir(partition) == []  # neither the folder nor a temp was left behind


def test_fetch_collection_reports_what_it_installed_kept_and_refused(tmp_path: Path,
                                                                     objects) -> None:
    local = tmp_path / "local"
    made = [write_segment(local, 0, s, s + 5) for s in (0, 5, 10)]
    rels = [remote.rel_path(m) for m in made]
    for manifest in made:
        objects.push_segment(local, manifest)
    objects.push_marker(rels[0])
    objects.fs.rm_file(f"{objects.key(rels[2])}/manifest.json")
    other = tmp_path / "other"
    objects.fetch(rels[1], other)
    report = remote.fetch_collection(objects, other, COLLECTION, 0)
    assert (report.fetched, report.kept, report.markers) == ([rels[0]], [rels[1]], 1)
    assert report.refused == {
        rels[2]: "manifest.json: missing (an incomplete upload, or no such folder)"}
    assert [p.name for p in segfolder.list_segments(other, COLLECTION, 0)] == [
        made[0].segment_id, made[1].segment_id]


def test_readers_fetch_missing_folders_only_from_an_attached_store(tmp_path: Path) -> None:
    local = tmp_path / "local"
    manifest = write_segment(local)
    rel = remote.rel_path(manifest)
    settings = Settings(store=tmp_path / "reader", store_url=f"file://{tmp_path}/b")
    objects = remote.RemoteStore.from_settings(settings)
    assert objects.push_segment(local, manifest)
    assert remote.local_folder(settings.store, rel) == settings.store / rel
    assert not (settings.store / rel).exists()  # nothing attached to this root yet
    assert objects.fetch(rel, settings.store) == settings.store / rel
    assert files_of(settings.store / rel) == files_of(local / rel)
    store.remove(settings.store / rel)
    assert remote.attach(settings) is not None
    assert segfolder.verify(remote.local_folder(settings.store, rel)) == manifest
    assert remote.attach(Settings(store=tmp_path / "plain")) is None


def test_mirroring_pushes_only_where_a_store_is_attached(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path / "writer", store_url=f"file://{tmp_path}/m")
    manifest = write_segment(settings.store)
    rel = remote.rel_path(manifest)
    assert not remote.mirror_segment(tmp_path / "elsewhere", manifest)
    objects = remote.attach(settings)
    assert remote.mirror_segment(settings.store, manifest)
    assert remote.mirror_marker(settings.store, rel)
    assert objects.is_complete(rel) and objects.is_registered(rel)
    assert not remote.mirror_segment(settings.store, manifest)  # already there


def test_a_broken_store_fails_with_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RemoteStoreError, match="cannot open the snapshot store nope://x"):
        remote.RemoteStore("nope://x")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's folder should be")
    objects = remote.RemoteStore(f"file://{blocked}")
    local = tmp_path / "local"
    manifest = write_segment(local)
    with pytest.raises(RemoteStoreError, match=f"uploading {remote.rel_path(manifest)} at "
                                               f"file://{blocked} failed"):
        objects.push_segment(local, manifest)
    assert objects.push_marker(remote.rel_path(manifest)) is False  # logged, not raised


def test_settings_read_the_object_store_from_env_and_mask_its_secrets(monkeypatch,
                                                                       tmp_path) -> None:
    options = {"endpoint_url": "http://127.0.0.1:9", "key": "AKIA-ID", "secret": SECRET,
               "client_kwargs": {"region_name": "us-east-1", "aws_session_token": SECRET}}
    monkeypatch.setenv("STREAMVEC_STORE_URL", " s3://bucket/prefix ")
    monkeypatch.setenv("STREAMVEC_STORE_OPTIONS", json.dumps(options))
    settings = Settings(store=tmp_path)
    assert settings.store_url == "s3://bucket/prefix"
    assert settings.store_options == options
    text = f"{settings!r} {settings.describe()}"
    assert SECRET not in text and "AKIA-ID" not in text and "http://127.0.0.1:9" in text
    assert redact_storage_options(options) == {
        "endpoint_url": "http://127.0.0.1:9", "key": "***", "secret": "***",
        "client_kwargs": {"region_name": "us-east-1", "aws_session_token": "***"}}
    for name in list(os.environ):
        if name.startswith("STREAMVEC_"):
            monkeypatch.delenv(name)
    for name, value in settings.child_env().items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert (child.store_url, child.store_options) == ("s3://bucket/prefix", options)


def test_settings_refuse_a_url_without_protocol_and_options_that_are_no_object(
        monkeypatch) -> None:
    monkeypatch.delenv("STREAMVEC_STORE_URL", raising=False)
    monkeypatch.delenv("STREAMVEC_STORE_OPTIONS", raising=False)
    assert Settings(store_url="").store_url is None
    with pytest.raises(ValidationError, match="snapshot URL must name its protocol"):
        Settings(store_url="bucket/prefix")
    with pytest.raises(ValidationError, match="snapshot storage options must be a JSON object"):
        Settings(store_options="[1, 2]")
