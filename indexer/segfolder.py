"""The segment folder format: written to a temp folder, fsynced, renamed; sha256-checked on load."""

# Format 2 writes no index file for an exact ("Flat") segment: its search scans vectors.npy,
# which a Flat index would only duplicate on disk and in memory. Format 1 folders, which hold
# an index.faiss whatever the factory, stay readable; a Flat one is served by the same scan.
# Format 3 adds the rows' metadata as typed columns (indexer/columns.py, COLUMN_FILES), built
# at seal, so that filters never parse JSON; a segment of format 1 or 2 gets them built from
# its meta.bin when a filter first needs them.
#
# Loading maps every file once and hashes the mapping itself, so the bytes that were verified
# are the very pages the arrays then read: nothing is copied, and nothing is read twice.

from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap as mmap_module
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer import columns
from indexer.build import FLAT
from indexer.errors import CorruptSegment
from indexer.segment import SealedRows, parse_segment_id, segment_id
from streamvec import files as fs

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
READABLE_FORMATS = frozenset({1, 2, FORMAT_VERSION})
MANIFEST = "manifest.json"
METRICS = ("l2", "ip", "cosine")
INDEX_FILE = "index.faiss"
# A manifest must list exactly these (plus INDEX_FILE unless the segment is Flat in format 2
# or later, plus the column files from format 3), so a tampered one cannot point outside its
# folder.
DATA_FILES = frozenset({"vectors.npy", "ids.npy", "offsets.npy", "event_time.npy",
                        "meta_offsets.npy", "meta.bin", "deleted_ids.npy", "hides.json"})
COLUMN_FILES = columns.COLUMN_FILES
FILES = DATA_FILES | {INDEX_FILE} | COLUMN_FILES  # every file a segment folder may hold
# An .npy header is a few hundred bytes; numpy's own reader refuses one past 10,000.
_NPY_HEADER_MAX = 1 << 16
_CHUNK = 16 << 20


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
    """A segment opened for search: manifest, FAISS index, arrays (memory-mapped by default).

    `index` is None for a Flat segment: its exact search scans `vectors`.
    """

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
    # The metadata columns: stored (format 3), else built on first use (columns.of_segment).
    columns: columns.Columns | None = None

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

    `final` is named after the segment's id (the store decides the folder it lies in). A
    "Flat" segment needs no `index` (one given is checked, not written): readers scan vectors.
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
        files = _write_files(tmp, sealed, None if factory == FLAT else index, hides)
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
    if manifest.format not in READABLE_FORMATS:
        raise CorruptSegment(path, MANIFEST, f"unknown format version {manifest.format}")
    if manifest.fingerprint != manifest.expected_fingerprint():
        raise CorruptSegment(path, MANIFEST, f"fingerprint {manifest.fingerprint} contradicts "
                             f"the manifest {manifest.expected_fingerprint()}")
    if set(manifest.files) != expected_files(manifest.format, manifest.factory) or (
            manifest.segment_id != path.name):
        raise CorruptSegment(path, MANIFEST, "file list or segment id does not fit the folder")
    return manifest


def expected_files(format_version: int, factory: str) -> frozenset[str]:
    """The files a folder of this format holds for this factory: no index for Flat since 2,
    metadata columns since 3."""
    files = DATA_FILES if format_version >= 2 and factory == FLAT else DATA_FILES | {INDEX_FILE}
    return files | COLUMN_FILES if format_version >= 3 else files


def load_segment(path: Path | str, *, verify: bool = True, mmap: bool = True) -> LoadedSegment:
    """Open a segment folder; with `verify`, check every file's size and sha256 first.

    With `mmap` the arrays are read-only views of the file mappings that were hashed; without
    it, of the bytes read. A Flat segment gets no FAISS index, even where a format 1 folder
    holds one: its search scans the vectors, exactly.
    """
    path = Path(path)
    manifest = read_manifest(path)
    buffers = {name: _read(path, name, lambda p, n=name: _open_file(p, manifest.files[n],
                                                                   verify=verify, mmap=mmap))
               for name in sorted(manifest.files)}
    arrays = {name: _read(path, name, lambda _, n=name: _npy(buffers[n]))
              for name in DATA_FILES if name.endswith(".npy")}
    index = None
    if manifest.factory != FLAT:
        index = _read(path, INDEX_FILE, lambda p: _read_index(p, mmap))
    segment = LoadedSegment(
        path, manifest, index, arrays["ids.npy"], arrays["vectors.npy"], arrays["offsets.npy"],
        arrays["event_time.npy"], arrays["deleted_ids.npy"],
        _read(path, "hides.json", lambda _: _hides(buffers["hides.json"])),
        arrays["meta_offsets.npy"], np.frombuffer(buffers["meta.bin"], dtype=np.uint8))
    _check_fingerprint(segment)
    if manifest.format >= 3:
        segment.columns = _read(path, columns.INDEX_FILE, lambda _: _columns(segment, buffers))
    return segment


def _columns(segment: LoadedSegment, buffers: dict[str, Any]) -> columns.Columns:
    """The stored metadata columns of a loaded segment, as views of their files' buffers."""
    arrays = {name: _npy(buffers[name]) for name in COLUMN_FILES if name.endswith(".npy")}
    blobs = {name: buffers[name] for name in COLUMN_FILES if not name.endswith(".npy")}
    return columns.from_files(arrays, blobs, segment.manifest.rows,
                              raw=columns.segment_rows(segment))


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
        (index is not None or factory == FLAT, f"a {factory!r} segment needs its built index"),
        (index is None or (index.ntotal == n and index.d == sealed.dim),
         f"index has {getattr(index, 'ntotal', 0)} rows of dim {getattr(index, 'd', 0)}, rows "
         f"are {n} of dim {sealed.dim}"),
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
    """Write every data file (and `index` unless None) into `tmp`; return sizes and sha256.

    Each file is hashed from the bytes as they are written, not read back. All of them are
    fsynced at the end and at once: the filesystem then commits them together (on ext4 one
    folder took about half the time of fsyncing its files one after another).
    """
    lengths = np.fromiter((len(m) for m in sealed.metadata), dtype=np.int64, count=sealed.rows)
    meta_offsets = np.zeros(sealed.rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=meta_offsets[1:])
    arrays = {"vectors.npy": sealed.vectors, "ids.npy": sealed.ids,
              "offsets.npy": np.asarray(sealed.offsets, dtype=np.int64),
              "event_time.npy": np.asarray(sealed.event_time_ms, dtype=np.int64),
              "meta_offsets.npy": meta_offsets, "deleted_ids.npy": sealed.deleted_ids}
    files = {name: _write_npy(tmp / name, array) for name, array in arrays.items()}
    files["meta.bin"] = _write_parts(tmp / "meta.bin", [b"".join(sealed.metadata)])
    files["hides.json"] = _write_parts(tmp / "hides.json",
                                       [json.dumps(hides, sort_keys=True).encode()])
    column_arrays, column_blobs = columns.to_files(
        columns.build(sealed.metadata, raw=lambda: sealed.metadata))
    files.update({name: _write_npy(tmp / name, array) for name, array in column_arrays.items()})
    files.update({name: _write_parts(tmp / name, [blob]) for name, blob in column_blobs.items()})
    if index is not None:  # serialized in memory, so that it is hashed without a read back
        files[INDEX_FILE] = _write_parts(tmp / INDEX_FILE, [faiss.serialize_index(index)])
    with ThreadPoolExecutor(len(files), thread_name_prefix="sv-fsync") as pool:
        list(pool.map(fs.fsync_file, [tmp / name for name in files]))  # raises what one raised
    return dict(sorted(files.items()))


def _write_npy(file: Path, array: np.ndarray) -> dict[str, Any]:
    """Save `array` as .npy (what np.save writes), hashing the bytes on the way."""
    array = np.ascontiguousarray(array)  # a view when it already is, as sealed vectors are
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return _write_parts(file, [header.getvalue(), array.reshape(-1).view(np.uint8)])


def _write_parts(file: Path, parts: list[Any]) -> dict[str, Any]:
    """Write the buffers `parts` one after another to a new file; its size and sha256."""
    digest, size = hashlib.sha256(), 0
    with open(file, "xb") as f:
        for part in parts:
            f.write(part)
            digest.update(part)
            size += memoryview(part).nbytes
    return {"sha256": digest.hexdigest(), "bytes": size}


def _file_info(file: Path) -> dict[str, Any]:
    """Size and sha256 of a file another library wrote."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": file.stat().st_size}


def _open_file(file: Path, info: dict[str, Any], *, verify: bool, mmap: bool) -> Any:
    """The content of one listed file as a buffer (a read-only mapping with `mmap`), checked.

    With `verify` its size and sha256 must match `info`. The index file only gets checked
    here (None is returned): FAISS reads it by name.
    """
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise CorruptSegment(file.parent, file.name, "missing") from None
    if verify and size != info["bytes"]:
        raise CorruptSegment(file.parent, file.name,
                             f"{size} bytes, the manifest says {info['bytes']}")
    if file.name == INDEX_FILE:
        if verify and _file_info(file)["sha256"] != info["sha256"]:
            raise CorruptSegment(file.parent, file.name, "sha256 does not match the manifest")
        return None
    with open(file, "rb") as f:
        if not mmap:
            content: Any = f.read()
        elif size == 0:  # an empty file cannot be mapped
            content = b""
        else:
            # Verifying reads every page: populating the mapping at once costs less than
            # faulting them in one by one, and the arrays then read the same pages.
            flags = mmap_module.MAP_SHARED | (mmap_module.MAP_POPULATE if verify else 0)
            content = mmap_module.mmap(f.fileno(), 0, flags=flags, prot=mmap_module.PROT_READ)
    if verify and (len(content) != info["bytes"]
                   or hashlib.sha256(content).hexdigest() != info["sha256"]):
        raise CorruptSegment(file.parent, file.name, "sha256 does not match the manifest")
    return content


def _npy(buffer: Any) -> np.ndarray:
    """A read-only array over the .npy bytes in `buffer`, without a copy; no pickled objects."""
    view = memoryview(buffer)
    head = io.BytesIO(view[:_NPY_HEADER_MAX].tobytes())
    version = np.lib.format.read_magic(head)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if dtype.hasobject:
        raise ValueError("an .npy file of Python objects is refused")
    count = int(np.prod(shape, dtype=np.int64))
    start = head.tell()
    if len(view) - start != count * dtype.itemsize:
        raise ValueError(f"{len(view) - start} data bytes for shape {shape} of {dtype}")
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=start)
    return array.reshape(shape, order="F" if fortran else "C")


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
         and int(mo[-1]) == len(seg.meta_blob) and bool(np.all(mo[1:] >= mo[:-1]))),
        ("deleted_ids.npy", seg.deleted_ids.ndim == 1 and seg.deleted_ids.dtype.kind == "S"),
        (INDEX_FILE, seg.index is None or (seg.index.ntotal == rows and seg.index.d == dim)),
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


def _hides(buffer: Any) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v, dtype=np.int64) for k, v in json.loads(bytes(buffer)).items()}


def _verified_or_none(path: Path) -> SegmentManifest | None:
    if not path.is_dir():
        return None
    try:
        return verify(path)
    except CorruptSegment as exc:
        log.warning("%s", exc)
        return None


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()
