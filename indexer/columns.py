"""Typed metadata columns: each metadata field of a block of rows as numpy arrays, for filters."""

# A filter (searcher/filters.py) is evaluated on these columns with numpy, never by parsing a
# row's JSON at query time. Per field a block holds:
#
# - present: the key is in the row's metadata object (whatever its value, null included);
# - num: the value as a float64 where it is a number (NaN elsewhere): JSON numbers compare as
#   IEEE doubles, so 1 and 1.0 are one value and integers past 2**53 round;
# - codes: an int32 code where the value is a string (-1 elsewhere), into a vocabulary sorted
#   by code point, so a range on strings is a range of codes;
# - bools: int8, 1 for true, 0 for false, -1 where the value is not a boolean;
# - null: where the value is JSON null.
#
# A value of any other kind (an object, an array, NaN, a number beyond the double range) is
# present and nothing else: it equals no filter value and is in no range. `kind_of` is the one
# definition of these kinds, shared with the reference evaluator of searcher/filters.py.
#
# A segment folder stores its columns in eight files (COLUMN_FILES), each kind of array stacked
# per field. At most MAX_FIELDS fields are stored (the most frequent ones); a block with more
# is "incomplete", and a filter on a field it does not store builds that field's column from
# the rows' JSON once (kept for later filters, up to MAX_EXTRA fields). Segments written before
# columns existed get all of theirs built from their JSON on first filtered use (`of_segment`).
# The live tail's metadata grows row by row: `TailColumns` builds blocks over it as filters
# need them.

from __future__ import annotations

import bisect
import json
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Fields stored per block: a block's arrays take about rows x fields x 14 bytes at most.
MAX_FIELDS = 64
# Columns of unstored fields built on demand and kept per block.
MAX_EXTRA = 64
# A stored vocabulary up to this size is decoded whole on first use; a larger one string by
# string (a lookup reads about log2(size) of them).
VOCAB_DECODED_BYTES = 1 << 20
COLUMNS_VERSION = 1
INDEX_FILE = "columns.json"
COLUMN_FILES = frozenset({INDEX_FILE, "col_present.npy", "col_num.npy", "col_codes.npy",
                          "col_bool.npy", "col_null.npy", "col_vocab.bin",
                          "col_vocab_offsets.npy"})

# Kinds of a metadata value (kind_of).
MISSING, NULL, BOOL, NUMBER, STRING, OTHER = "missing", "null", "bool", "number", "string", "other"
_ABSENT = object()  # a key not in a row's metadata


def kind_of(value: Any) -> tuple[str, Any]:
    """The kind of one metadata value and its comparable form (a float for numbers)."""
    if value is _ABSENT:
        return MISSING, None
    if value is None:
        return NULL, None
    if isinstance(value, bool):
        return BOOL, value
    if isinstance(value, str):
        return STRING, value
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the double range
            return OTHER, None
        return (OTHER, None) if math.isnan(number) else (NUMBER, number)
    return OTHER, None


def field_value(metadata: Any, name: str) -> Any:
    """The value of `name` in a row's metadata, or the absent marker kind_of reads as missing."""
    return metadata.get(name, _ABSENT) if isinstance(metadata, dict) else _ABSENT


def parse_row(raw: Any) -> dict | None:
    """A row's stored metadata bytes as an object; None for none, invalid JSON or a non-object."""
    if not raw:
        return None
    try:
        value = json.loads(bytes(raw))
    except (ValueError, RecursionError):  # unreadable metadata is no metadata
        return None
    return value if isinstance(value, dict) else None


class Vocab(Sequence):
    """A sorted vocabulary of strings: code i is the i-th string in code point order."""

    def __init__(self, size: int, word: Callable[[int], str]) -> None:
        self._size = size
        self._word = word

    @classmethod
    def of(cls, words: list[str]) -> Vocab:
        """A vocabulary over sorted Python strings."""
        return cls(len(words), words.__getitem__)

    @classmethod
    def stored(cls, blob: Any, offsets: np.ndarray, lo: int, hi: int) -> Vocab:
        """Strings lo .. hi - 1 of a stored vocabulary (UTF-8 `blob` cut at `offsets`).

        A small one is decoded whole on first use; a large one a string at a time, as a
        lookup's binary search reads it.
        """
        view = memoryview(blob).cast("B")
        small = int(offsets[hi]) - int(offsets[lo]) <= VOCAB_DECODED_BYTES
        decoded: list[list[str]] = []  # the whole list, once made (by any thread)

        def one(i: int) -> str:
            a, b = int(offsets[lo + i]), int(offsets[lo + i + 1])
            return bytes(view[a:b]).decode("utf-8", "surrogatepass")

        def word(i: int) -> str:
            if not small:
                return one(i)
            if not decoded:
                decoded.append([one(j) for j in range(hi - lo)])
            return decoded[0][i]
        return cls(hi - lo, word)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._size))]
        if not 0 <= i < self._size:
            raise IndexError(i)
        return self._word(i)

    def code(self, word: str) -> int:
        """The code of `word`, or -1 when no row holds it."""
        i = bisect.bisect_left(self, word)
        return i if i < len(self) and self[i] == word else -1

    def below(self, word: str, inclusive: bool) -> int:
        """How many codes sort before `word` (and equal to it, when `inclusive`)."""
        return (bisect.bisect_right if inclusive else bisect.bisect_left)(self, word)


@dataclass(frozen=True, slots=True)
class Column:
    """One field over a block of rows; a kind's array is None when no row holds that kind."""

    present: np.ndarray  # bool
    num: np.ndarray | None = None  # float64, NaN where not a number
    codes: np.ndarray | None = None  # int32, -1 where not a string
    vocab: Vocab | None = None
    bools: np.ndarray | None = None  # int8: 1 true, 0 false, -1 not a boolean
    null: np.ndarray | None = None  # bool


class Columns:
    """The columns of a block of rows, by field name, and where to build the unstored ones."""

    def __init__(self, rows: int, fields: dict[str, Column], complete: bool,
                 raw: Callable[[], Sequence[Any]] | None = None) -> None:
        self.rows = rows
        self.fields = fields
        # False: more fields than MAX_FIELDS occur; the others are built from `raw` on demand.
        self.complete = complete
        self._raw = raw
        self._extra: OrderedDict[str, Column | None] = OrderedDict()
        self._lock = threading.Lock()

    def column(self, name: str) -> Column | None:
        """The column of `name`; None when no row of the block has that field."""
        found = self.fields.get(name)
        if found is not None or self.complete or self._raw is None:
            return found
        with self._lock:
            if name in self._extra:
                self._extra.move_to_end(name)
                return self._extra[name]
        built = _column([field_value(parse_row(r), name) for r in self._raw()])
        with self._lock:
            self._extra[name] = built
            while len(self._extra) > MAX_EXTRA:
                self._extra.popitem(last=False)
        return built


def build(raws: Sequence[Any], max_fields: int | None = None,
          raw: Callable[[], Sequence[Any]] | None = None) -> Columns:
    """Columns of the rows whose metadata JSON is `raws` (b"" for none), one parse per row.

    At most `max_fields` fields are stored (default MAX_FIELDS); `raw` gives the rows again
    for the others (None: `raws` itself is kept when there are others).
    """
    max_fields = MAX_FIELDS if max_fields is None else max_fields
    rows = [parse_row(r) for r in raws]
    counts: Counter[str] = Counter()
    for row in rows:
        if row is not None:
            counts.update(row.keys())
    names = sorted(counts, key=lambda n: (-counts[n], n))
    stored = names[:max_fields]
    fields = {name: _column([field_value(row, name) for row in rows]) for name in stored}
    complete = len(names) <= max_fields
    if not complete and raw is None:
        kept = list(raws)
        raw = lambda: kept  # noqa: E731  (a block of the tail keeps its rows for extra fields)
    return Columns(len(rows), fields, complete, raw)


def _column(values: list[Any]) -> Column | None:
    """One field's column from its value in every row (the absent marker where missing)."""
    n = len(values)
    present: list[int] = []
    num_at, nums, str_at, strs, bool_at, bools, null_at = [], [], [], [], [], [], []
    for i, value in enumerate(values):
        if value is _ABSENT:
            continue
        present.append(i)
        kind, key = kind_of(value)
        if kind == NUMBER:
            num_at.append(i)
            nums.append(key)
        elif kind == STRING:
            str_at.append(i)
            strs.append(key)
        elif kind == BOOL:
            bool_at.append(i)
            bools.append(key)
        elif kind == NULL:
            null_at.append(i)
    if not present:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[present] = True
    num = codes = bool_col = null = vocab = None
    if num_at:
        num = np.full(n, np.nan, dtype=np.float64)
        num[num_at] = nums
    if str_at:
        words = sorted(set(strs))
        code = {w: c for c, w in enumerate(words)}
        codes = np.full(n, -1, dtype=np.int32)
        codes[str_at] = [code[s] for s in strs]
        vocab = Vocab.of(words)
    if bool_at:
        bool_col = np.full(n, -1, dtype=np.int8)
        bool_col[bool_at] = bools
    if null_at:
        null = np.zeros(n, dtype=bool)
        null[null_at] = True
    return Column(mask, num, codes, vocab, bool_col, null)


# Segment files.

def to_files(table: Columns) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
    """The column files of a block: .npy arrays by file name, and the other files' bytes."""
    index: list[dict[str, Any]] = []
    stacks: dict[str, list[np.ndarray]] = {"num": [], "codes": [], "bool": [], "null": []}
    words: list[bytes] = []
    present = []
    for name, col in table.fields.items():
        entry: dict[str, Any] = {"name": name}
        present.append(col.present)
        for kind, array in (("num", col.num), ("codes", col.codes), ("bool", col.bools),
                            ("null", col.null)):
            if array is not None:
                entry[kind] = len(stacks[kind])
                stacks[kind].append(array)
        if col.vocab is not None:
            entry["vocab"] = [len(words), len(words) + len(col.vocab)]
            words.extend(w.encode("utf-8", "surrogatepass") for w in col.vocab)
        index.append(entry)
    n = table.rows
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in words], out=offsets[1:])
    arrays = {"col_present.npy": _stack(present, n, bool),
              "col_num.npy": _stack(stacks["num"], n, np.float64),
              "col_codes.npy": _stack(stacks["codes"], n, np.int32),
              "col_bool.npy": _stack(stacks["bool"], n, np.int8),
              "col_null.npy": _stack(stacks["null"], n, bool),
              "col_vocab_offsets.npy": offsets}
    doc = {"version": COLUMNS_VERSION, "rows": n, "complete": table.complete, "fields": index}
    blobs = {INDEX_FILE: json.dumps(doc, sort_keys=True, ensure_ascii=True).encode(),
             "col_vocab.bin": b"".join(words)}
    return arrays, blobs


def _stack(arrays: list[np.ndarray], rows: int, dtype: Any) -> np.ndarray:
    return np.stack(arrays) if arrays else np.zeros((0, rows), dtype=dtype)


def from_files(arrays: dict[str, np.ndarray], blobs: dict[str, Any], rows: int,
               raw: Callable[[], Sequence[Any]] | None = None) -> Columns:
    """The columns a segment folder stores, as views of its arrays; ValueError if they lie."""
    doc = json.loads(bytes(blobs[INDEX_FILE]))
    if not (isinstance(doc, dict) and doc.get("version") == COLUMNS_VERSION
            and doc.get("rows") == rows and isinstance(doc.get("complete"), bool)
            and isinstance(doc.get("fields"), list)):
        raise ValueError(f"columns index is not version {COLUMNS_VERSION} over {rows} rows")
    kinds = {"num": ("col_num.npy", np.float64), "codes": ("col_codes.npy", np.int32),
             "bool": ("col_bool.npy", np.int8), "null": ("col_null.npy", np.bool_)}
    present = arrays["col_present.npy"]
    offsets = arrays["col_vocab_offsets.npy"]
    blob = blobs["col_vocab.bin"]
    _expect(present, len(doc["fields"]), rows, np.bool_, "col_present.npy")
    for name, dtype in kinds.values():
        _expect(arrays[name], arrays[name].shape[0] if arrays[name].ndim == 2 else -1, rows,
                dtype, name)
    if not (offsets.ndim == 1 and offsets.dtype == np.int64 and len(offsets) >= 1
            and offsets[0] == 0 and int(offsets[-1]) == len(blob)
            and bool(np.all(offsets[1:] >= offsets[:-1]))):
        raise ValueError("col_vocab_offsets.npy does not fit col_vocab.bin")
    bytes(blob).decode("utf-8", "surrogatepass")  # raises on bytes no vocabulary writes
    fields: dict[str, Column] = {}
    for number, entry in enumerate(doc["fields"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            raise ValueError(f"columns index entry {number} has no name")
        parts: dict[str, Any] = {}
        for kind, (file, _) in kinds.items():
            at = entry.get(kind)
            if at is not None:
                if not (isinstance(at, int) and 0 <= at < arrays[file].shape[0]):
                    raise ValueError(f"columns index entry {number}: {kind} {at!r} out of range")
                parts[kind] = arrays[file][at]
        vocab = None
        if "codes" in parts:
            lo, hi = entry.get("vocab", [None, None])
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi < len(offsets)):
                raise ValueError(f"columns index entry {number}: vocabulary out of range")
            vocab = Vocab.stored(blob, offsets, lo, hi)
        fields[entry["name"]] = Column(present[number], parts.get("num"), parts.get("codes"),
                                       vocab, parts.get("bool"), parts.get("null"))
    return Columns(rows, fields, doc["complete"], raw)


def _expect(array: np.ndarray, count: int, rows: int, dtype: Any, name: str) -> None:
    if array.ndim != 2 or array.shape != (count, rows) or array.dtype != dtype:
        raise ValueError(f"{name} has shape {array.shape} of {array.dtype}, expected "
                         f"({count}, {rows}) of {np.dtype(dtype)}")


# What a searcher asks for.

_building = threading.Lock()


def segment_rows(segment: Any) -> Callable[[], list[memoryview]]:
    """Each row's metadata bytes of a segment (a segfolder.LoadedSegment), read again each
    call (for unstored fields)."""
    def rows() -> list[memoryview]:
        bounds = segment.meta_offsets.tolist()
        blob = memoryview(segment.meta_blob)
        return [blob[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return rows


def of_segment(segment: Any) -> Columns:
    """The columns of a loaded segment (a segfolder.LoadedSegment): its stored ones, else built
    from its JSON once."""
    table = segment.columns
    if table is not None:
        return table
    with _building:  # one build per segment, even when several searches ask at once
        if segment.columns is None:
            rows = segment_rows(segment)
            segment.columns = build(rows(), raw=rows)
        return segment.columns


@dataclass(slots=True)
class _Block:
    """Columns over rows start .. start + table.rows - 1 of a tail's metadata list."""

    start: int
    table: Columns


@dataclass(slots=True)
class TailColumns:
    """Columns over a list of metadata that only grows (a tail partition's), built lazily.

    Blocks are built when a filter first needs their rows; the last two merge (built again
    from their rows) whenever the newer is at least as large as the older, so a list of n rows
    is held in about log2(n) blocks and each row is parsed about log2(n) times in all.
    """

    raws: list[bytes]
    _blocks: list[_Block] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def pieces(self, lo: int, hi: int) -> list[tuple[Columns, int, int]]:
        """Blocks covering list rows [lo, hi): (columns, first row, end row) within each."""
        with self._lock:
            covered = self._blocks[-1].start + self._blocks[-1].table.rows if self._blocks else 0
            if hi > covered:
                self._blocks.append(_Block(covered, build(self.raws[covered:hi])))
                while len(self._blocks) >= 2 and (
                        self._blocks[-1].table.rows >= self._blocks[-2].table.rows):
                    newer, older = self._blocks.pop(), self._blocks.pop()
                    end = newer.start + newer.table.rows
                    self._blocks.append(_Block(older.start, build(self.raws[older.start:end])))
            blocks = list(self._blocks)
        out = []
        for block in blocks:
            a, b = max(lo, block.start), min(hi, block.start + block.table.rows)
            if a < b:
                out.append((block.table, a - block.start, b - block.start))
        return out
