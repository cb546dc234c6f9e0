"""A streamvec query client in a process of its own, driven by bench/peers.py.

Usage:
  python bench/_peer_client.py search --collection NAME --queries Q.npy [--ef N] [--seconds S]
                                [--min-seconds S]
  python bench/_peer_client.py fresh --collection NAME --probes P.npy [--seconds S]
                                [--probe-timeout S]
  python bench/_peer_client.py session --collection NAME --probe V.npy

Settings come from the STREAMVEC_* environment. Each mode prints JSON lines on stdout:
`search` times one query at a time (rows found in the first pass, latencies, queries done,
seconds); `fresh` upserts each probe row with the Producer SDK and polls a search for its id
until it comes back (milliseconds each, and the count missed); `session` prints
{"ready": true} once connected, reads one line of offsets (from Producer.flush) on stdin and
prints {"searchable": true} once a session-consistency search at those offsets was answered.
Query vectors travel as .npy files, results as JSON: no pickle.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import time
from typing import Any

import numpy as np

from ingest.producer import Producer
from searcher.client import Client
from searcher.errors import SearchError

ROW_PREFIX = "r"  # bench._stack.row_ids names row i "r<i>"
WARM_QUERIES = 10
SESSION_TIMEOUT_S = 300.0
MAX_TIMEOUT_S = 60.0  # the most one search may wait (protocol.MAX_TIMEOUT_MS)


def row_number(row_id: str | None) -> int:
    """The row number of a loaded row's id ("r12" -> 12); -1 for anything else."""
    if row_id and row_id.startswith(ROW_PREFIX) and row_id[len(ROW_PREFIX):].isdigit():
        return int(row_id[len(ROW_PREFIX):])
    return -1


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def search(client: Client, collection: str, queries: np.ndarray, k: int, ef: int | None,
           seconds: float, min_seconds: float = 0.0) -> dict[str, Any]:
    """Queries one at a time, in order, until all are done or `seconds` ran out; then, for
    the rate only, more passes until `min_seconds` have passed."""
    extra = {} if ef is None else {"ef": ef}
    for vector in queries[:WARM_QUERIES]:  # connection set-up and first-touch costs, unrecorded
        client.search(collection, vector, k=k, timeout=30, **extra)
    rows, latencies = [], []
    started = time.perf_counter()
    for vector in queries:
        t0 = time.perf_counter()
        got = client.search(collection, vector, k=k, timeout=30, **extra)
        latencies.append((time.perf_counter() - t0) * 1e3)
        rows.append([row_number(i) for i in got.ids[0]])
        if time.perf_counter() - started > seconds:
            break
    done = len(rows)
    while time.perf_counter() - started < min_seconds:
        client.search(collection, queries[done % len(queries)], k=k, timeout=30, **extra)
        done += 1
    return {"rows": rows, "latencies_ms": latencies, "done": done,
            "elapsed_s": time.perf_counter() - started}


def fresh(client: Client, collection: str, probes: np.ndarray, k: int, seconds: float,
          probe_timeout: float) -> dict[str, Any]:
    """Milliseconds from before each probe's upsert until a search returns its id, and how
    many probes no search returned within `probe_timeout` seconds."""
    samples: list[float] = []
    missed = 0
    started = time.perf_counter()
    with Producer(collection) as producer:
        # The first probe is not recorded: the idempotent producer's start-up is not freshness.
        for i, vector in enumerate(probes):
            took = _probe(producer, client, collection, f"probe-{i}", vector, k, probe_timeout)
            if i and took is not None:
                samples.append(took)
            elif i:
                missed += 1
            if time.perf_counter() - started > seconds:
                break
    return {"ms": samples, "missed": missed}


def _probe(producer: Producer, client: Client, collection: str, key: str, vector: np.ndarray,
           k: int, timeout: float) -> float | None:
    """Milliseconds until a search returned `key` after its upsert; None past `timeout`."""
    started = time.perf_counter()
    producer.upsert([key], vector[None, :])
    producer.flush(30)
    while key not in client.search(collection, vector, k=k, timeout=10).ids[0]:
        if time.perf_counter() - started > timeout:
            return None
    return (time.perf_counter() - started) * 1e3


def session(client: Client, collection: str, probe: np.ndarray) -> None:
    """Wait for offsets on stdin; answer once a search has seen them."""
    client.search(collection, probe, k=1, timeout=30)  # connected, collection resolved
    _emit({"ready": True})
    offsets = json.loads(sys.stdin.readline())
    if not isinstance(offsets, dict):
        raise SystemExit("session: expected a JSON object of {partition: offset} on stdin")
    deadline = time.perf_counter() + SESSION_TIMEOUT_S
    while True:
        try:
            client.search(collection, probe, k=1, consistency={"session": offsets},
                          timeout=MAX_TIMEOUT_S)
            break
        except SearchError as exc:  # each wait is bounded; the whole one by SESSION_TIMEOUT_S
            if exc.code != "consistency_timeout" or time.perf_counter() > deadline:
                raise
    _emit({"searchable": True})


def main(argv: list[str] | None = None) -> int:
    """Run one mode and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("search", "fresh", "session"))
    parser.add_argument("--collection", required=True)
    parser.add_argument("--queries", type=Path, help="search: float32 (n, dim) .npy")
    parser.add_argument("--probes", type=Path, help="fresh: float32 (n, dim) .npy of new rows")
    parser.add_argument("--probe", type=Path, help="session: float32 (1, dim) .npy to search")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", type=int, help="per-query HNSW efSearch (Client.search ef=)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="stop after the query or probe that passes this many seconds")
    parser.add_argument("--probe-timeout", type=float, default=10.0,
                        help="fresh: seconds after which a probe not found counts as missed")
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="search: repeat the queries until this many seconds, for the rate")
    args = parser.parse_args(argv)
    needed = {"search": "queries", "fresh": "probes", "session": "probe"}[args.mode]
    if getattr(args, needed) is None:
        parser.error(f"{args.mode} needs --{needed}")
    vectors = np.load(getattr(args, needed), allow_pickle=False)
    with Client() as client:
        if args.mode == "search":
            _emit(search(client, args.collection, vectors, args.k, args.ef, args.seconds,
                         args.min_seconds))
        elif args.mode == "fresh":
            _emit(fresh(client, args.collection, vectors, args.k, args.seconds,
                        args.probe_timeout))
        else:
            session(client, args.collection, vectors[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
