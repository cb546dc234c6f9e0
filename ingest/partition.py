"""Stable vector id -> Kafka partition mapping, identical in every process, machine and language.

Every op on one id must land in one partition, in order (invariant 1 in
docs/architecture.md), and any producer, in any language, must agree on that partition. The
hash is specified here so it can be reimplemented; all arithmetic is on unsigned 64-bit
integers, modulo 2**64:

    h = 0xcbf29ce484222325                      # FNV-1a 64 offset basis
    for each byte b of the id's UTF-8 encoding:
        h = (h XOR b) * 0x100000001b3           # FNV-1a 64 prime
    h = h XOR (h >> 30); h = h * 0xbf58476d1ce4e5b9
    h = h XOR (h >> 27); h = h * 0x94d049bb133111eb
    h = h XOR (h >> 31)                         # splitmix64 finalizer
    partition = h mod partitions

In FNV-1a the low k bits of h depend only on the low k bits of each byte (a multiply
carries upwards only), so `h mod 2**k` alone would ignore most of every character; the
finalizer folds the high bits down.

Test vectors: hash_id("") = 0xf52a15e9a9b5e89b, hash_id("a") = 0x02c0bdbf481420f8,
hash_id("user-42") = 0x7a1596f0e94b5793 (partition 3 of 8), more in tests/ingest/test_partition.py.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1
_MAX_PARTITIONS = 2**31 - 1  # results are int32


def _finalize(h: int) -> int:
    h = ((h ^ (h >> 30)) * _MIX1) & _MASK
    h = ((h ^ (h >> 27)) * _MIX2) & _MASK
    return h ^ (h >> 31)


def hash_id(id_: str | bytes) -> int:
    """The 64-bit partitioning hash of one id (str is hashed as its UTF-8 bytes)."""
    data = id_.encode("utf-8") if isinstance(id_, str) else bytes(id_)
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return _finalize(h)


def _id_matrix(ids: Iterable[str | bytes] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids as an (n, width) uint8 matrix of NUL-padded bytes, plus each id's byte length."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "S":
        fixed = np.ascontiguousarray(ids.reshape(-1))
        raw = fixed.view(np.uint8).reshape(len(fixed), fixed.dtype.itemsize)
        # An S value ends at its last non-NUL byte, as numpy itself reads it.
        present = raw[:, ::-1] != 0
        lengths = np.where(present.any(axis=1), raw.shape[1] - present.argmax(axis=1), 0)
        return raw, lengths
    items = ids.tolist() if isinstance(ids, np.ndarray) else ids
    encoded = [i if isinstance(i, bytes) else i.encode("utf-8") for i in items]
    lengths = np.fromiter(map(len, encoded), np.int64, count=len(encoded))
    width = max(1, int(lengths.max(initial=0)))
    # NULs an id ends with are kept in the buffer and counted by its length, so the result
    # matches hash_id on the same bytes even where numpy's S values would drop them.
    fixed = np.array(encoded, dtype=f"S{width}")
    return fixed.view(np.uint8).reshape(len(encoded), width), lengths


def partitions_for(ids: Iterable[str | bytes] | np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each id (str, bytes, or a numpy S/U array) among `partitions`, as int32."""
    partitions = operator.index(partitions)
    if not 1 <= partitions <= _MAX_PARTITIONS:
        raise ValueError(f"partitions must be in 1..{_MAX_PARTITIONS}, not {partitions}")
    raw, lengths = _id_matrix(ids)
    h = np.full(len(raw), _FNV_OFFSET, np.uint64)
    step = np.empty_like(h)
    shortest = int(lengths.min(initial=0))
    # uint64 array arithmetic wraps modulo 2**64, which is what FNV and splitmix64 want.
    with np.errstate(over="ignore"):
        for col in range(raw.shape[1]):  # one pass per byte position, vectorized over ids
            np.bitwise_xor(h, raw[:, col], out=step)
            np.multiply(step, np.uint64(_FNV_PRIME), out=step)
            if col < shortest:
                h, step = step, h
            else:
                np.copyto(h, step, where=lengths > col)
        h ^= h >> np.uint64(30)
        h *= np.uint64(_MIX1)
        h ^= h >> np.uint64(27)
        h *= np.uint64(_MIX2)
        h ^= h >> np.uint64(31)
    return (h % np.uint64(partitions)).astype(np.int32)
