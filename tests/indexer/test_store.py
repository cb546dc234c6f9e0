"""The object-store mirror of the segment store over a `file://` store: paths, order, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from pydantic import ValidationError

from indexer import segfolder
from indexer.errors import CorruptSegment, RemoteStoreError
from indexer.objectstore import RemoteStore
from indexer.segment import SealedRows
from indexer.store import SegmentStore, check_rel_path, is_registered, rel_path
from streamvec.settings import Settings, redact_storage_options

DIM = 4
COLLECTION = "docs@v2"
SECRET = "n0t-a-real-s3cret"  # noqa: S105 - must never show up in text


def write_segment(root: Path | SegmentStore, partition: int = 1, start: int = 0, end: int = 10
                  ) -> segfolder.SegmentManifest:
    """Write one small seeded segment folder into a store (or a plain one at `root`)."""
    store = root if isinstance(root, SegmentStore) else SegmentStore(root)
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
    return store.write(COLLECTION, 0, sealed, index, "Flat", "l2", {})


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def objects(tmp_path: Path) -> RemoteStore:
    """A store whose 'bucket' is a local folder: the same code path as s3://, no server."""
    return RemoteStore(f"file://{tmp_path / 'bucket'}/prefix")


def mirrored(root: Path, objects: RemoteStore) -> SegmentStore:
    """A segment store at `root` mirrored to `objects`."""
    return SegmentStore(root, objects)


def test_registry_paths_must_stay_inside_the_store(tmp_path: Path) -> None:
    good = "docs@v2/g0000/p0001/p0001-000000000000-000000000010"
    assert check_rel_path(good) == good
    assert check_rel_path(Path(good)) == good
    for bad in ("", "/etc/passwd", "../x", "docs/../../x", "a//b", "a/./b", "a\\b", "."):
        with pytest.raises(ValueError, match="is not a path relative to the segment store"):
            check_rel_path(bad)
        with pytest.raises(ValueError, match="is not a path relative to the segment store"):
            SegmentStore(tmp_path).folder(bad)


def test_remote_paths_mirror_the_local_layout(tmp_path: Path, objects) -> None:
    manifest = write_segment(tmp_path / "local")
    rel = rel_path(manifest)
    assert rel == "docs@v2/g0000/p0001/p0001-000000000000-000000000010"
    assert objects.key(rel) == f"{tmp_path}/bucket/prefix/{rel}"
    assert (tmp_path / "local" / rel).is_dir()


def test_push_then_fetch_is_byte_identical_and_idempotent(tmp_path: Path, objects) -> None:
    local = tmp_path / "local"
    manifest = write_segment(local)
    rel = rel_path(manifest)
    writer = mirrored(local, objects)
    assert writer.mirror(rel) is True
    assert writer.mirror(rel) is False  # same manifest there: nothing to do
    assert objects.exists(f"{rel}/manifest.json") and not objects.exists(rel + ".registered")
    marker = writer.mark_registered(rel)
    assert objects.read_bytes(rel + ".registered") == marker.read_bytes()  # one marker, twice
    reader = mirrored(tmp_path / "other", objects)
    fetched = reader.fetch(rel)
    assert fetched == tmp_path / "other" / rel
    assert files_of(fetched) == files_of(local / rel)
    assert reader.fetch_marker(rel) and is_registered(fetched)
    assert sorted(os.listdir(fetched.parent)) == [fetched.name, fetched.name + ".registered"]


def test_listing_orders_by_generation_partition_and_start(tmp_path: Path, objects) -> None:
    local = tmp_path / "local"
    made = [write_segment(local, p, s, s + 5) for p, s in ((2, 0), (1, 5), (1, 0))]
    store = mirrored(local, objects)
    for manifest in made:
        store.mirror(rel_path(manifest))
    assert store.list_remote(COLLECTION, 0) == [
        f"{COLLECTION}/g0000/p0001/p0001-000000000000-000000000005",
        f"{COLLECTION}/g0000/p0001/p0001-000000000005-000000000010",
        f"{COLLECTION}/g0000/p0002/p0002-000000000000-000000000005"]
    assert store.list_remote(COLLECTION) == store.list_remote(COLLECTION, 0)
    assert store.list_remote(COLLECTION, 3) == [] and store.list_remote("nothing") == []
    first = rel_path(made[2])
    store.mark_registered(first)
    store.remove(first)
    assert not objects.exists(first + ".registered") and not objects.exists(first)
    assert not (local / first).exists() and not is_registered(local / first)
    assert len(store.list_remote(COLLECTION, 0)) == 2


def test_an_incomplete_or_corrupt_remote_folder_is_never_installed(tmp_path: Path,
                                                                   objects) -> None:
    local = tmp_path / "local"
    manifest = write_segment(local)
    rel = rel_path(manifest)
    mirrored(local, objects).mirror(rel)
    key = objects.key(rel)
    objects.fs.pipe_file(f"{key}/ids.npy", b"tampered")
    reader = mirrored(tmp_path / "other", objects)
    with pytest.raises(CorruptSegment) as corrupt:
        reader.fetch(rel)
    assert (corrupt.value.file, corrupt.value.reason) == (
        "ids.npy", f"{len(b'tampered')} bytes, the manifest says "
                   f"{manifest.files['ids.npy']['bytes']}")
    assert str(corrupt.value).startswith(f"segment {objects.url}/{rel} is corrupt: ids.npy")
    objects.fs.rm_file(f"{key}/manifest.json")
    with pytest.raises(CorruptSegment, match="manifest.json: missing .an incomplete upload"):
        reader.folder(rel)
    partition = tmp_path / "other" / rel.rsplit("/", 1)[0]
    assert os.listdir(partition) == []  # neither the folder nor a temp was left behind


def test_fetch_collection_reports_what_it_installed_kept_and_refused(tmp_path: Path,
                                                                     objects) -> None:
    local = tmp_path / "local"
    made = [write_segment(local, 0, s, s + 5) for s in (0, 5, 10)]
    rels = [rel_path(m) for m in made]
    writer = mirrored(local, objects)
    for rel in rels:
        writer.mirror(rel)
    writer.mark_registered(rels[0])
    objects.fs.rm_file(f"{objects.key(rels[2])}/manifest.json")
    reader = mirrored(tmp_path / "other", objects)
    reader.fetch(rels[1])
    report = reader.fetch_collection(COLLECTION, 0)
    assert (report.fetched, report.kept, report.markers) == ([rels[0]], [rels[1]], 1)
    assert report.refused == {
        rels[2]: "manifest.json: missing (an incomplete upload, or no such folder)"}
    assert [p.name for p in reader.list_segments(COLLECTION, 0)] == [
        made[0].segment_id, made[1].segment_id]


def test_readers_fetch_missing_folders_only_from_a_mirrored_store(tmp_path: Path) -> None:
    local = tmp_path / "local"
    manifest = write_segment(local)
    rel = rel_path(manifest)
    settings = Settings(store=tmp_path / "reader", store_url=f"file://{tmp_path}/b")
    reader = SegmentStore.from_settings(settings)
    assert reader.root == settings.store and reader.remote is not None
    assert SegmentStore(local, reader.remote).mirror(rel)
    plain = SegmentStore(settings.store)  # the same folder, without its object store
    assert plain.folder(rel) == settings.store / rel
    assert not (settings.store / rel).exists()
    assert segfolder.verify(reader.folder(rel)) == manifest
    assert files_of(settings.store / rel) == files_of(local / rel)
    assert SegmentStore.from_settings(Settings(store=tmp_path / "plain")).remote is None
    with pytest.raises(RemoteStoreError, match="no object store is set"):
        plain.fetch_collection(COLLECTION)


def test_writing_mirrors_only_where_an_object_store_is_set(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path / "writer", store_url=f"file://{tmp_path}/m")
    store = SegmentStore.from_settings(settings)
    manifest = write_segment(tmp_path / "elsewhere")  # a store without an object store
    assert not SegmentStore(tmp_path / "elsewhere").mirror(rel_path(manifest))
    rel = rel_path(write_segment(store))
    assert store.remote.exists(f"{rel}/manifest.json")  # uploaded by the write itself
    store.mark_registered(rel)
    assert store.remote.exists(rel + ".registered")
    assert not store.mirror(rel)  # already there


def test_a_collection_is_counted_and_removed_here_and_in_the_object_store(tmp_path: Path,
                                                                        objects) -> None:
    store = mirrored(tmp_path / "local", objects)
    rels = [rel_path(write_segment(store, p, 0, 5)) for p in (0, 1)]
    store.mark_registered(rels[0])
    (store.root / COLLECTION / "g0000" / "p0000" / ".tmp-left-by-a-crash").mkdir()
    other = write_segment(tmp_path / "local", 2, 0, 5)  # written here only, never mirrored
    assert store.count_folders(COLLECTION) == 3 and len(store.list_remote(COLLECTION)) == 2
    assert store.remove_collection(COLLECTION) == 3
    assert not (store.root / COLLECTION).exists() and store.count_folders(COLLECTION) == 0
    assert store.list_remote(COLLECTION) == [] and not objects.exists(rels[0] + ".registered")
    assert not objects.exists(rel_path(other))


def test_walk_places_every_entry_of_a_collection_in_the_layout(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path)
    marked, unmarked = (rel_path(write_segment(store, 3, s, s + 10)) for s in (0, 10))
    store.mark_registered(marked)
    part = store.root / COLLECTION / "g0000" / "p0003"
    (part / "p0003-000000000020-000000000030.registered").write_text("{}")
    (part / ".tmp-p0003-x").mkdir()
    (store.root / COLLECTION / "g0000" / "notes").write_text("x")
    (store.root / COLLECTION / "g1").mkdir()  # too few digits to be a generation
    (store.root / "not a collection").mkdir()
    items = store.walk(COLLECTION)
    assert [(i.path.removeprefix(COLLECTION + "/"), i.kind) for i in items] == [
        ("g1", "other"), ("g0000/notes", "other"), ("g0000/p0003/.tmp-p0003-x", "temp"),
        ("g0000/p0003/p0003-000000000000-000000000010", "segment"),
        ("g0000/p0003/p0003-000000000010-000000000020", "segment"),
        ("g0000/p0003/p0003-000000000020-000000000030.registered", "marker")]
    first, second = items[3], items[4]
    assert (first.generation, first.partition, first.segment, first.registered) == (
        0, 3, "p0003-000000000000-000000000010", True)
    assert first.marker == marked + ".registered" and second.path == unmarked
    assert not second.registered and second.marker is None
    assert store.walk("absent") == [] and store.collections() == [COLLECTION]


def test_a_broken_store_fails_with_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RemoteStoreError, match="cannot open the segment store nope://x"):
        RemoteStore("nope://x")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's folder should be")
    objects = RemoteStore(f"file://{blocked}")
    local = tmp_path / "local"
    manifest = write_segment(local)
    store = mirrored(local, objects)
    with pytest.raises(RemoteStoreError, match=f"uploading {rel_path(manifest)} at "
                                               f"file://{blocked} failed"):
        store.mirror(rel_path(manifest))
    marker = store.mark_registered(rel_path(manifest))  # the upload fails: logged, not raised
    assert is_registered(marker.parent / manifest.segment_id)


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
    with pytest.raises(ValidationError, match="store URL must name its protocol"):
        Settings(store_url="bucket/prefix")
    with pytest.raises(ValidationError, match="store options must be a JSON object"):
        Settings(store_options="[1, 2]")
