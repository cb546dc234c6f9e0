"""Vector id -> Kafka partition, identical in every process, machine and language.

Every op on one id must land in one partition, in order (invariant 1 in
docs/architecture.md), and any producer, in any language, must agree on that partition. A
collection's spec names one of two partitioners (PARTITIONERS); both are specified here so
they can be reimplemented.

"kafka": the default partitioner of the Java client for a record with a key, which any
Kafka producer can match (docs/protocol.md lists the settings per client). All arithmetic
is on unsigned 32-bit integers, modulo 2**32:

    m = 0x5bd1e995
    h = 0x9747b28c XOR len(key)                 # murmur2 with Kafka's seed
    for each 4-byte little-endian word k of the key's UTF-8 bytes:
        k = k * m; k = k XOR (k >> 24); k = k * m
        h = (h * m) XOR k
    if 1 to 3 bytes remain: h = (h XOR their little-endian value) * m
    h = h XOR (h >> 13); h = h * m; h = h XOR (h >> 15)
    partition = (h AND 0x7fffffff) mod partitions

Test vectors: murmur2(b"") = 0x106e08d9, murmur2(b"a") = 0xa2d0b27c, murmur2(b"user-42") =
0x5700682c (partition 4 of 8), more in tests/ingest/test_partition.py. Java's
`org.apache.kafka.common.utils.Utils.murmur2` returns the same 32 bits as a signed int.

"streamvec": the first partitioner, kept for the collections created with it (a spec
stored without a partitioner field reads as this one). All arithmetic is on unsigned
64-bit integers, modulo 2**64:

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
_M2_SEED = 0x9747B28C
_M2_MUL = 0x5BD1E995
_M2_MASK = (1 << 32) - 1

STREAMVEC = "streamvec"
KAFKA = "kafka"
PARTITIONERS: tuple[str, ...] = (KAFKA, STREAMVEC)


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


def murmur2(key: str | bytes) -> int:
    """Kafka's murmur2 of a key (str is hashed as its UTF-8 bytes), as an unsigned 32-bit int."""
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    n = len(data)
    h = _M2_SEED ^ n
    whole = n & ~3
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M2_MUL) & _M2_MASK
        k = ((k ^ (k >> 24)) * _M2_MUL) & _M2_MASK
        h = ((h * _M2_MUL) & _M2_MASK) ^ k
    if n > whole:
        h = ((h ^ int.from_bytes(data[whole:], "little")) * _M2_MUL) & _M2_MASK
    h = ((h ^ (h >> 13)) * _M2_MUL) & _M2_MASK
    return h ^ (h >> 15)


def partition_of(id_: str | bytes, partitions: int, partitioner: str = STREAMVEC) -> int:
    """The partition of one id among `partitions` under `partitioner` (one of PARTITIONERS)."""
    if partitioner == KAFKA:
        return (murmur2(id_) & 0x7FFFFFFF) % partitions
    if partitioner == STREAMVEC:
        return hash_id(id_) % partitions
    raise ValueError(_unknown(partitioner))


def _unknown(partitioner: object) -> str:
    return f"partitioner must be one of {', '.join(PARTITIONERS)}, not {partitioner!r}"


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


def partitions_for(ids: Iterable[str | bytes] | np.ndarray, partitions: int,
                   partitioner: str = STREAMVEC) -> np.ndarray:
    """Partition of each id (str, bytes, or a numpy S/U array) among `partitions`, as int32."""
    partitions = operator.index(partitions)
    if not 1 <= partitions <= _MAX_PARTITIONS:
        raise ValueError(f"partitions must be in 1..{_MAX_PARTITIONS}, not {partitions}")
    if partitioner not in PARTITIONERS:
        raise ValueError(_unknown(partitioner))
    raw, lengths = _id_matrix(ids)
    if partitioner == KAFKA:
        positive = _murmur2_columns(raw, lengths) & np.uint32(0x7FFFFFFF)
        return (positive % np.uint32(partitions)).astype(np.int32)
    return (_fnv_splitmix_columns(raw, lengths) % np.uint64(partitions)).astype(np.int32)


def _fnv_splitmix_columns(raw: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """hash_id of every row of an id matrix, vectorized over ids."""
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
    return h


def _murmur2_columns(raw: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """murmur2 of every row of an id matrix, vectorized over ids, as uint32."""
    n, width = raw.shape
    # Padded with NULs to whole words plus one, so every id's partial last word is a column.
    padded = np.zeros((n, (width // 4 + 1) * 4), np.uint8)
    padded[:, :width] = raw
    words = padded.view("<u4")
    m = np.uint32(_M2_MUL)
    h = np.uint32(_M2_SEED) ^ lengths.astype(np.uint32)
    full_words = lengths // 4
    # uint32 array arithmetic wraps modulo 2**32, which is what murmur2 wants.
    with np.errstate(over="ignore"):
        for col in range(int(full_words.max(initial=0))):
            k = words[:, col] * m
            k ^= k >> np.uint32(24)
            k *= m
            np.copyto(h, (h * m) ^ k, where=full_words > col)
        # NUL padding past an id's end leaves its 1 to 3 remaining bytes as the word's value.
        tail = np.take_along_axis(words, full_words[:, None].astype(np.intp), axis=1)[:, 0]
        np.copyto(h, (h ^ tail) * m, where=(lengths & 3) != 0)
        h ^= h >> np.uint32(13)
        h *= m
        h ^= h >> np.uint32(15)
    return h
