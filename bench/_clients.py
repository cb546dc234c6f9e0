"""Query clients in processes of their own: a load whose clients share no interpreter with the
benchmark, its ingest thread or each other.

The benchmark writes the query pool to a .npy file and starts one `python bench/_clients.py`
per client with the collection's settings in its environment. Each child connects, says
`ready` on stdout, waits for `go` on stdin, sends one-vector searches back to back for the
run's length, then prints one JSON line: its latencies, answers and the seconds it ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable

import numpy as np

from bench._load import READY, LoadResult, child_line
from streamvec.settings import Settings

START_TIMEOUT_S = 120.0
# A child's last search may have started just before the deadline and waits this long at most.
SEARCH_TIMEOUT_S = 30.0
GO = "go"


def query_load(settings: Settings, collection: str, queries: np.ndarray, *, clients: int,
               seconds: float, k: int = 10, seed: int = 0, ef: int | None = None) -> LoadResult:
    """`clients` processes send one-vector searches back to back for `seconds`, at HNSW
    efSearch `ef` if given (else the collection's default)."""
    given = [] if ef is None else ["--ef", str(ef)]
    return drive(settings, Path(__file__).resolve(), ["--collection", collection, *given],
                 queries, clients=clients, seconds=seconds, k=k, seed=seed)


def drive(settings: Settings, script: Path, flags: list[str], queries: np.ndarray, *,
          clients: int, seconds: float, k: int, seed: int) -> LoadResult:
    """Run `clients` copies of a client `script` (with `flags`) over the query pool together.

    Each copy says `ready`, waits for `go`, searches for `seconds` and prints its JSON report;
    the reports are summed into one LoadResult.
    """
    with tempfile.TemporaryDirectory(prefix="sv-clients-") as tmp:
        pool = Path(tmp) / "queries.npy"
        np.save(pool, np.ascontiguousarray(queries, dtype=np.float32), allow_pickle=False)
        procs = [subprocess.Popen(
            [sys.executable, str(script), *flags, "--queries", str(pool), "--seconds",
             str(seconds), "--k", str(k), "--seed", str(seed * 1000 + c)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=settings.child_env())
            for c in range(clients)]
        try:
            for proc in procs:  # every client connected before any starts: one common start
                line = child_line(proc, START_TIMEOUT_S, f"a query client ({script.name})")
                if line != READY:
                    raise RuntimeError(f"a query client ({script.name}) did not start: {line!r}")
            for proc in procs:
                proc.stdin.write(GO + "\n")
                proc.stdin.flush()
            reports = [json.loads(child_line(proc, seconds + SEARCH_TIMEOUT_S + START_TIMEOUT_S,
                                             "a query client")) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(30)
    failed = [r["error"] for r in reports if r.get("error")]
    if failed:
        raise RuntimeError(f"{len(failed)} query client(s) failed: {failed[0]}")
    latencies = [ms for r in reports for ms in r["latencies_ms"]]
    answers = [(q, ids) for r in reports for q, ids in r.get("answers", [])]
    # Each client's rate over its own run (in-flight searches at the deadline included), summed.
    qps = sum(len(r["latencies_ms"]) / r["elapsed_s"] for r in reports if r["elapsed_s"] > 0)
    return LoadResult(qps, latencies, answers, sum(r.get("cpu_s", 0.0) for r in reports))


def run_client(queries_file: Path, seed: int, seconds: float,
               ask: Callable[[np.ndarray], list[str]]) -> dict:
    """One client process's run: say `ready`, wait for `go`, then `ask` queries back to back.

    `ask` sends one query vector and returns its answer's ids; the report holds every
    latency, every (query, ids) answer and the seconds the run took, or the error that ended it.
    """
    queries = np.load(queries_file, allow_pickle=False)
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    answers: list[tuple[int, list[str]]] = []
    print(READY, flush=True)
    if sys.stdin.readline().strip() != GO:
        return {"error": "no start signal"}
    started, cpu = time.perf_counter(), time.process_time()
    deadline = started + seconds
    try:
        while time.perf_counter() < deadline:
            q = int(rng.integers(0, len(queries)))
            t0 = time.perf_counter()
            ids = ask(queries[q])
            latencies.append((time.perf_counter() - t0) * 1e3)
            answers.append((q, ids))
    except Exception as exc:  # reported to the benchmark, which fails the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"latencies_ms": latencies, "answers": answers,
            "elapsed_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}


def _client(args: argparse.Namespace) -> dict:
    """One client's run through `Client.search`."""
    from searcher.client import Client

    with Client(settings=Settings()) as client:
        def ask(vector: np.ndarray) -> list[str]:
            got = client.search(args.collection, vector, k=args.k, timeout=SEARCH_TIMEOUT_S,
                                ef=args.ef)
            return [i for i in got.ids[0] if i is not None]

        return run_client(args.queries, args.seed, args.seconds, ask)


def main(argv: list[str] | None = None) -> None:
    """Run one query client (started by `query_load`, not by hand)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--queries", type=Path, required=True, help=".npy file of query rows")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ef", type=int, default=None, help="HNSW efSearch of every search")
    print(json.dumps(_client(parser.parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
