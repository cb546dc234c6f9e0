"""Record codec speed: encode and decode rows/s for float32 batches, beside raw numpy.frombuffer.

The raw baseline is `np.frombuffer(vector_bytes, np.float32).reshape(n, dim)` over a buffer
holding only the vectors: the least any decoder could do. A bare frombuffer is a zero-copy
O(1) view, so the first table mostly compares fixed per-call costs; the second materialises
the vectors (decode + np.ascontiguousarray(batch.vectors) against frombuffer + .copy()), and
adds decode_valid, so a reader sees what the header, the strided rows and validation cost.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

import numpy as np

from bench.common import Result, machine_info, measure_all, parse_scaled, print_table, si
from ingest import record

MODEL_VERSION = "bench@v1"
DEFAULTS = {"small": {"min_time": 0.01}, "full": {"min_time": 0.05}}


def _inputs(n: int, dim: int) -> tuple[list[str], np.ndarray, bytes, bytes]:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"item-{i:08d}" for i in range(n)]
    payload = record.encode(ids, vectors, model_version=MODEL_VERSION, event_time_ms=0)
    return ids, vectors, payload, vectors.tobytes()


def _bench_size(n: int, dim: int, min_time: float, result: Result) -> tuple[list, list]:
    """Time every operation at one batch size; record it and return a row of each table."""
    ids, vectors, payload, raw = _inputs(n, dim)

    def encode() -> bytes:
        return record.encode(ids, vectors, model_version=MODEL_VERSION, event_time_ms=0)

    def decode_copy() -> np.ndarray:
        return np.ascontiguousarray(record.decode(payload).vectors)

    def raw_copy() -> np.ndarray:
        return np.frombuffer(raw, np.float32).reshape(n, dim).copy()

    def valid_copy() -> np.ndarray:
        batch = record.decode_valid(payload, dim=dim, model_version=MODEL_VERSION)
        return np.ascontiguousarray(batch.vectors)

    if not (np.array_equal(decode_copy(), raw_copy()) and np.array_equal(valid_copy(), vectors)):
        raise SystemExit(f"decoded vectors differ from the encoded ones at {n} rows")
    enc, dec, bare, dec_c, raw_c, val_c = measure_all(
        [encode, lambda: record.decode(payload),
         lambda: np.frombuffer(raw, np.float32).reshape(n, dim), decode_copy, raw_copy, valid_copy],
        min_time=min_time)
    result.figure(f"encode_{n}", f"encode, {n}-row batches", enc.rate(n), "rows/s")
    result.compare(f"decode_{n}", f"decode (zero-copy view), {n}-row batches", dec.rate(n),
                   bare.rate(n), "rows/s", "numpy.frombuffer view")
    result.compare(f"decode_copy_{n}", f"decode + copy, {n}-row batches", dec_c.rate(n),
                   raw_c.rate(n), "rows/s", "numpy.frombuffer + copy")
    result.compare(f"decode_valid_copy_{n}", f"decode_valid + copy, {n}-row batches",
                   val_c.rate(n), raw_c.rate(n), "rows/s", "numpy.frombuffer + copy")
    views = [n, len(payload), si(enc.best, "s"), si(enc.rate(n)), si(dec.best, "s"),
             si(dec.rate(n)), si(bare.best, "s"), si(bare.rate(n)), f"{bare.best / dec.best:.2f}x"]
    copies = [n, si(dec_c.best, "s"), si(dec_c.rate(n)), si(raw_c.best, "s"), si(raw_c.rate(n)),
              f"{raw_c.best / dec_c.best:.2f}x", si(val_c.best, "s"), si(val_c.rate(n)),
              f"{raw_c.best / val_c.best:.2f}x"]
    return views, copies


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run every batch size, print the machine and both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--sizes", default="1,64,1024", help="comma-separated rows per batch")
    parser.add_argument("--min-time", type=float,
                        help="seconds each of the 7 interleaved repeats lasts at least")
    args = parse_scaled(parser, DEFAULTS, argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    result = Result("codec", "Record codec: encode and decode rows/s", args)
    results = [_bench_size(n, args.dim, args.min_time, result) for n in sizes]
    result.summary.append(f"decode_valid_copy_{max(sizes)}")
    print(f"machine: {machine_info()}")
    print(f"codec: dim {args.dim}, float32, ids of 13 bytes, no metadata; best of 7 repeats, "
          "taken in turn; rates in rows/s; ratio = our rows/s over raw's (1.00x = as fast)\n")
    print("zero-copy views: encode (validates what it writes), decode, raw frombuffer")
    print_table(["rows", "payload B", "encode", "enc rows/s", "decode", "dec rows/s", "raw",
                 "raw rows/s", "decode/raw"], [views for views, _ in results])
    print("\nmaterialised vectors: decode + ascontiguousarray, frombuffer + copy, "
          "decode_valid + ascontiguousarray")
    print_table(["rows", "decode+copy", "rows/s", "raw+copy", "rows/s", "ratio",
                 "valid+copy", "rows/s", "ratio"], [copies for _, copies in results])
    result.write()


if __name__ == "__main__":
    main()
