"""The segment folder format: written to a temp folder, fsynced, renamed; sha256-checked on load."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.errors import CorruptSegment
from indexer.segment import SealedRows, parse_segment_id, segment_id
from streamvec import files as fs

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
METRICS = ("l2", "ip", "cosine")
# A manifest must list exactly these, so a tampered one cannot point outside its folder.
FILES = frozenset({"index.faiss", "vectors.npy", "ids.npy", "offsets.npy", "event_time.npy",
                   "meta_offsets.npy", "meta.bin", "deleted_ids.npy", "hides.json"})
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SegmentManifest:
    """The manifest of a segment folder: what it covers, how it was built, every file's sha256."""

    format: int
    segment_id: str
    collection: str
    generation: int
    partition: int
    start_offset: int
    end_offset: int
    rows: int
    dim: int
    metric: str
    factory: str
    fingerprint: dict[str, Any]
    created_at: float
    files: dict[str, dict[str, Any]]

    def expected_fingerprint(self) -> dict[str, Any]:
        """The fingerprint that the manifest's own fields imply."""
        return {"dim": self.dim, "metric": self.metric, "factory": self.factory, "rows": self.rows,
                "start_offset": self.start_offset, "end_offset": self.end_offset}

    def to_json(self) -> bytes:
        """Serialize with a checksum over every field, so any edit of the manifest is detected."""
        body = asdict(self)
        body["checksum"] = _digest(body)
        return json.dumps(body, sort_keys=True, indent=1).encode()


@dataclass(slots=True)
class LoadedSegment:
    """A segment opened for search: manifest, FAISS index, arrays (memory-mapped by default)."""

    path: Path
    manifest: SegmentManifest
    index: Any
    ids: np.ndarray
    vectors: np.ndarray
    offsets: np.ndarray
    event_time_ms: np.ndarray
    deleted_ids: np.ndarray
    hides: dict[str, np.ndarray]
    meta_offsets: np.ndarray
    meta_blob: np.ndarray

    def metadata(self, row: int) -> dict | None:
        """Return the JSON metadata of `row`, or None if the row has none."""
        if not 0 <= row < self.manifest.rows:
            raise IndexError(f"row {row} out of range for {self.manifest.rows} rows")
        lo, hi = int(self.meta_offsets[row]), int(self.meta_offsets[row + 1])
        return json.loads(bytes(self.meta_blob[lo:hi])) if hi > lo else None


def write_segment(
    final: Path, collection: str, generation: int, sealed: SealedRows, index: Any,
    factory: str, metric: str, hides: dict[str, Any],
) -> SegmentManifest:
    """Persist `sealed` and its built `index` as the immutable folder `final`; idempotent.

    `final` is named after the segment's id (the store decides the folder it lies in).
    """
    hides = _check_inputs(sealed, index, factory, metric, hides)
    sid = segment_id(sealed.partition, sealed.start_offset, sealed.end_offset)
    if final.name != sid:
        raise ValueError(f"the folder of segment {sid} must be named after it, not {final.name}")
    existing = _verified_or_none(final)
    if existing is not None:
        return existing
    fs.makedirs(final.parent)
    tmp = fs.temp_path(final)
    tmp.mkdir()
    try:
        files = _write_files(tmp, sealed, index, hides)
        fingerprint = {"dim": sealed.dim, "metric": metric, "factory": factory,
                       "rows": sealed.rows, "start_offset": sealed.start_offset,
                       "end_offset": sealed.end_offset}
        manifest = SegmentManifest(
            FORMAT_VERSION, sid, collection, generation, sealed.partition, sealed.start_offset,
            sealed.end_offset, sealed.rows, sealed.dim, metric, factory, fingerprint,
            round(time.time(), 3), files)
        fs.write_new(tmp / MANIFEST, manifest.to_json())  # last: its presence means complete
        fs.fsync_dir(tmp)
        if fs.install_dir(tmp, final, lambda p: _verified_or_none(p) is not None):
            return manifest
        return read_manifest(final)
    finally:
        fs.remove(tmp)


def read_manifest(path: Path | str) -> SegmentManifest:
    """Read and check a segment's manifest (checksum, format, fingerprint); raise CorruptSegment."""
    path = Path(path)
    try:
        body = json.loads((path / MANIFEST).read_bytes())
        stored = body.pop("checksum")
        manifest = SegmentManifest(**body)
    except FileNotFoundError:
        raise CorruptSegment(path, MANIFEST, "missing") from None
    except OSError as exc:
        raise CorruptSegment(path, MANIFEST, f"unreadable ({exc})", transient=True) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptSegment(path, MANIFEST, f"unreadable ({exc})") from None
    if stored != _digest(body):
        raise CorruptSegment(path, MANIFEST, "checksum does not match the manifest's fields")
    if manifest.format != FORMAT_VERSION:
        raise CorruptSegment(path, MANIFEST, f"unknown format version {manifest.format}")
    if manifest.fingerprint != manifest.expected_fingerprint():
        raise CorruptSegment(path, MANIFEST, f"fingerprint {manifest.fingerprint} contradicts "
                             f"the manifest {manifest.expected_fingerprint()}")
    if set(manifest.files) != FILES or manifest.segment_id != path.name:
        raise CorruptSegment(path, MANIFEST, "file list or segment id does not fit the folder")
    return manifest


def load_segment(path: Path | str, *, verify: bool = True, mmap: bool = True) -> LoadedSegment:
    """Open a segment folder; with `verify`, check every file's sha256 first."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        _check_files(path, manifest)
    mode = "r" if mmap else None
    arrays = {name: _read(path, name, lambda p: np.load(p, mmap_mode=mode, allow_pickle=False))
              for name in FILES if name.endswith(".npy")}
    segment = LoadedSegment(
        path, manifest, _read(path, "index.faiss", lambda p: _read_index(p, mmap)),
        arrays["ids.npy"], arrays["vectors.npy"], arrays["offsets.npy"],
        arrays["event_time.npy"], arrays["deleted_ids.npy"], _read(path, "hides.json", _hides),
        arrays["meta_offsets.npy"], _read(path, "meta.bin", lambda p: _blob(p, mmap)))
    _check_fingerprint(segment)
    return segment


def verify(path: Path | str) -> SegmentManifest:
    """Check a segment folder completely (sha256, sizes, fingerprint vs arrays and index)."""
    return load_segment(path, verify=True, mmap=True).manifest


def _check_inputs(sealed: SealedRows, index: Any, factory: str, metric: str,
                  hides: dict[str, Any]) -> dict[str, list[int]]:
    """Reject inputs that would make a folder no reader can trust; return normalized hides."""
    n = sealed.rows
    problems = [
        (metric in METRICS, f"metric must be one of {METRICS}"),
        (isinstance(factory, str) and bool(factory.strip()), "factory must be a non-empty string"),
        (0 <= sealed.start_offset < sealed.end_offset, "need 0 <= start_offset < end_offset"),
        (sealed.vectors.ndim == 2 and sealed.vectors.dtype == np.float32, "vectors: float32 2-D"),
        (sealed.ids.ndim == 1 and sealed.ids.dtype.kind == "S", "ids: 1-D bytes (S) array"),
        (sealed.deleted_ids.ndim == 1 and sealed.deleted_ids.dtype.kind == "S",
         "deleted_ids: 1-D bytes (S) array"),
        (len(sealed.vectors) == len(sealed.offsets) == len(sealed.event_time_ms)
         == len(sealed.metadata) == n, "row counts differ between ids, vectors, offsets, metadata"),
        (n == 0 or (int(np.min(sealed.offsets)) >= sealed.start_offset
                    and int(np.max(sealed.offsets)) < sealed.end_offset), "offsets out of range"),
        (index.ntotal == n and index.d == sealed.dim, f"index has {index.ntotal} rows of dim "
         f"{index.d}, rows are {n} of dim {sealed.dim}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ValueError(f"cannot write segment of partition {sealed.partition}: {message}")
    normal: dict[str, list[int]] = {}
    for sid, rows in hides.items():
        part, _, end = parse_segment_id(sid)
        if part != sealed.partition or end > sealed.start_offset:
            raise ValueError(f"hides may name only earlier segments of partition "
                             f"{sealed.partition}, not {sid}")
        normal[sid] = sorted({int(r) for r in rows})
    return normal


def _write_files(tmp: Path, sealed: SealedRows, index: Any, hides: dict[str, list[int]]
                 ) -> dict[str, dict[str, Any]]:
    """Write every data file into `tmp`, fsynced; return their sizes and sha256."""
    lengths = np.fromiter((len(m) for m in sealed.metadata), dtype=np.int64, count=sealed.rows)
    meta_offsets = np.zeros(sealed.rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=meta_offsets[1:])
    arrays = {"vectors.npy": np.ascontiguousarray(sealed.vectors), "ids.npy": sealed.ids,
              "offsets.npy": np.asarray(sealed.offsets, dtype=np.int64),
              "event_time.npy": np.asarray(sealed.event_time_ms, dtype=np.int64),
              "meta_offsets.npy": meta_offsets, "deleted_ids.npy": sealed.deleted_ids}
    for name, array in arrays.items():
        np.save(tmp / name, array, allow_pickle=False)
        fs.fsync_file(tmp / name)
    fs.write_new(tmp / "meta.bin", b"".join(sealed.metadata))
    fs.write_new(tmp / "hides.json", json.dumps(hides, sort_keys=True).encode())
    faiss.write_index(index, str(tmp / "index.faiss"))
    fs.fsync_file(tmp / "index.faiss")
    return {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in sorted(FILES)}


def _check_files(path: Path, manifest: SegmentManifest) -> None:
    """Compare every file's size and sha256 with the manifest."""
    for name, info in sorted(manifest.files.items()):
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            raise CorruptSegment(path, name, "missing") from None
        if size != info["bytes"]:
            raise CorruptSegment(path, name, f"{size} bytes, the manifest says {info['bytes']}")
        if _sha256(path / name) != info["sha256"]:
            raise CorruptSegment(path, name, "sha256 does not match the manifest")


def _check_fingerprint(seg: LoadedSegment) -> None:
    """Compare the arrays and the index with the manifest's fingerprint."""
    fp = seg.manifest.fingerprint
    rows, dim, start, end = fp["rows"], fp["dim"], fp["start_offset"], fp["end_offset"]
    mo, off = seg.meta_offsets, seg.offsets
    checks = [
        ("vectors.npy", seg.vectors.shape == (rows, dim) and seg.vectors.dtype == np.float32),
        ("ids.npy", seg.ids.shape == (rows,) and seg.ids.dtype.kind == "S"),
        ("offsets.npy", off.shape == (rows,) and off.dtype == np.int64 and (
            rows == 0 or (int(off.min()) >= start and int(off.max()) < end))),
        ("event_time.npy", seg.event_time_ms.shape == (rows,)),
        ("meta_offsets.npy", mo.shape == (rows + 1,) and mo.dtype == np.int64 and mo[0] == 0
         and int(mo[-1]) == len(seg.meta_blob) and bool(np.all(np.diff(mo) >= 0))),
        ("deleted_ids.npy", seg.deleted_ids.ndim == 1 and seg.deleted_ids.dtype.kind == "S"),
        ("index.faiss", seg.index.ntotal == rows and seg.index.d == dim),
    ]
    for name, ok in checks:
        if not ok:
            raise CorruptSegment(seg.path, name, f"does not match the fingerprint {fp}")


def _read(path: Path, name: str, reader: Callable[[Path], Any]) -> Any:
    """Run `reader` on one file of the folder, turning any failure into CorruptSegment."""
    try:
        return reader(path / name)
    except (OSError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        # FAISS reports a failed open or map (EMFILE, too many maps) as a RuntimeError.
        transient = (isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)) or (
            isinstance(exc, RuntimeError) and ("could not open" in str(exc) or "mmap" in str(exc)))
        raise CorruptSegment(path, name, f"unreadable ({exc})", transient=transient) from None


def _read_index(file: Path, mmap: bool) -> Any:
    if mmap:
        try:
            return faiss.read_index(str(file), faiss.IO_FLAG_MMAP)
        except RuntimeError:
            pass  # index types without mmap support load fully
    return faiss.read_index(str(file))


def _blob(file: Path, mmap: bool) -> np.ndarray:
    if mmap and file.stat().st_size:  # an empty file cannot be mapped
        return np.memmap(file, dtype=np.uint8, mode="r")
    return np.frombuffer(file.read_bytes(), dtype=np.uint8)


def _hides(file: Path) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v, dtype=np.int64) for k, v in json.loads(file.read_bytes()).items()}


def _verified_or_none(path: Path) -> SegmentManifest | None:
    if not path.is_dir():
        return None
    try:
        return verify(path)
    except CorruptSegment as exc:
        log.warning("%s", exc)
        return None


def _sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()
