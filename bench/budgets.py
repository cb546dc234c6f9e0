"""A searcher's peak memory under one huge request, beside the formula in docs/operations.md.

A collection of 20,000 x 384 rows is sealed into Flat segments, a `streamvec searcher` process
serves it, and a separate client process sends one request of 1024 query vectors with k=1000.
The searcher's VmHWM (peak resident memory since it started) is read before and after. Run
once with the default budgets (the request is over them: `too_large`) and once with budgets
raised so that it is answered, which measures what answering costs with bounded rescoring.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import re
import subprocess
import time

from bench._stack import SEARCHER_READY, START_TIMEOUT_S, Role, rows_and_queries, sealed
from bench.common import Result, machine_info, parse_scaled, print_table
from searcher.budgets import Budgets
from searcher.client import Client
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 20_000, "queries": 1024, "k": 1000},
    "full": {"rows": 20_000, "queries": 1024, "k": 1000},
}
MIB = 2**20
# The terms of the formula in docs/operations.md ("Searcher memory"), in bytes.
RUNTIME_BYTES = 120 * MIB  # Python, numpy, FAISS, librdkafka and redis-py, loaded and idle
ROW_OVERHEAD = 200  # per served row: its id, the id map, offsets, hidden flags
SLOT_BYTES = 200  # per result slot of one batch: FAISS results, candidates, merge, answer
BLOCK_BYTES = 64 * MIB  # rescoring and exact-scan blocks, argpartition copies
TAIL_ROW_BYTES = 250  # per tail row beside its vector: id, latest-op map, offsets, metadata
KAFKA_BYTES = 128 * MIB  # librdkafka: queued.max.messages.kbytes plus one fetch
# The client program: one search, its outcome as JSON on stdout.
CLIENT = """
import json, sys, time
import numpy as np
from searcher import SearchError
from searcher.client import Client
name, n, dim, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
queries = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
started = time.perf_counter()
try:
    result = Client().search(name, queries, k=k, timeout=60)
    out = {"reply": "answer", "rows": int((result.ids != None).sum())}
except SearchError as exc:
    out = {"reply": exc.code, "message": exc.message}
out["seconds"] = time.perf_counter() - started
print(json.dumps(out))
"""


def index_row_bytes(index: str, dim: int) -> int:
    """Bytes per row of a FAISS index of this factory string (the formula's I(index))."""
    upper = index.upper()
    if upper.startswith("HNSW"):
        m = int("".join(c for c in upper[4:] if c.isdigit()) or 32)
        return 4 * dim + 8 * m + 40  # vectors, level-0 links, upper levels and levels table
    if "PQ" in upper:
        return int(upper.rsplit("PQ", 1)[1].split("X")[0]) + 8  # codes and the id list
    return 0  # Flat: no index, the mapped vectors (counted beside it) are scanned


def predicted(budgets: Budgets, rows: int, dim: int, index: str, slots: int) -> dict[str, int]:
    """The formula's terms for a searcher serving `rows` that runs a batch of `slots`."""
    segments = rows * (index_row_bytes(index, dim) + 4 * dim + ROW_OVERHEAD)
    batch = min(slots, budgets.batch_results) * SLOT_BYTES + BLOCK_BYTES if slots else 0
    return {"runtime": RUNTIME_BYTES, "segments": segments, "batch": batch,
            "idle": RUNTIME_BYTES + segments, "peak": RUNTIME_BYTES + segments + batch}


def bound(budgets: Budgets, rows: int, dim: int, index: str) -> int:
    """The documented upper bound: every budget spent at once (docs/operations.md)."""
    return (predicted(budgets, rows, dim, index, budgets.batch_results)["peak"]
            + budgets.tail_rows * (8 * dim + TAIL_ROW_BYTES) + KAFKA_BYTES + budgets.read_bytes
            + budgets.request_bytes + budgets.waiting_bytes + 4 * budgets.reply_bytes)


def memory(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def start_searcher(settings: Settings, name: str, log_dir: Path, flags: list[str]) -> Role:
    """A `streamvec searcher` process with these flags, once it serves."""
    log = log_dir / f"searcher-{len(list(log_dir.glob('searcher-*')))}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamvec", "searcher", "--collection",
                                 name, *flags], stdout=out, stderr=subprocess.STDOUT,
                                env=settings.child_env())
    role = Role(proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    ready = re.compile(SEARCHER_READY.format(re.escape(name)))
    while not ready.search(role.log_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            role.stop(5)
            raise RuntimeError(f"the searcher did not start:\n{role.log_text()[-2000:]}")
        time.sleep(0.05)  # start-up probe
    return role


def run_case(settings: Settings, name: str, tmp: Path, flags: list[str], args,
             offsets: dict[int, int]) -> dict:
    """One searcher process, one huge request from another process: memory and the reply."""
    role = start_searcher(settings, name, tmp, flags)
    try:
        with Client(settings=settings) as client:  # the tail has caught up: idle memory
            client.search(name, [0.0] * args.dim, consistency={"session": offsets}, timeout=60)
        before = memory(role.proc.pid)
        done = subprocess.run([sys.executable, "-c", CLIENT, name, str(args.queries),
                               str(args.dim), str(args.k)], env=settings.child_env(),
                              capture_output=True, text=True, timeout=300, check=True)
        after = memory(role.proc.pid)
        alive = role.proc.poll() is None
    finally:
        role.stop()
    return {"before": before, "after": after, "alive": alive,
            **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> None:
    """Seal the collection, then measure the searcher under default and raised budgets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows in the collection")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--index", default="Flat", help="segment index_factory string")
    parser.add_argument("--queries", type=int, help="query vectors in the request")
    parser.add_argument("-k", type=int, help="k of the request")
    args = parse_scaled(parser, DEFAULTS, argv)
    base = Settings()
    result = Result("budgets", "Searcher peak memory under a 1024 x k=1000 request", args, base)
    print(machine_info())
    data, _ = rows_and_queries(args.rows, args.dim)
    slots = args.queries * args.k
    raised = ["--max-request-results", str(slots), "--max-batch-results", str(slots)]
    cases = {"default budgets": [], "budgets raised to answer": raised}
    outcomes = {}
    with sealed(base, "bench-budgets", data, index=args.index, seal_rows=args.rows,
                seal_seconds=3.0) as (settings, spec, tmp):
        offsets = {p: 0 for p in range(spec.partitions)}
        for label, flags in cases.items():
            outcomes[label] = run_case(settings, spec.name, tmp, flags, args, offsets)
    budgets = Budgets.from_settings(base)
    rows = []
    for label, flags in cases.items():
        got = outcomes[label]
        used = budgets if not flags else Budgets(request_results=slots, batch_results=slots)
        ran = slots if got["reply"] == "answer" else 0
        guess = predicted(used, args.rows, args.dim, args.index, ran)
        key = "default" if not flags else "raised"
        result.figure(f"{key}_hwm_before_mib", f"{label}: VmHWM before",
                      got["before"]["VmHWM"] / MIB, "MiB")
        result.figure(f"{key}_hwm_after_mib", f"{label}: VmHWM after",
                      got["after"]["VmHWM"] / MIB, "MiB")
        result.figure(f"{key}_predicted_mib", f"{label}: formula's peak",
                      guess["peak"] / MIB, "MiB")
        result.figure(f"{key}_seconds", f"{label}: reply after", got["seconds"], "s")
        result.notes.append(f"{label}: reply {got['reply']}"
                            + (f" ({got['message']})" if "message" in got else ""))
        rows.append([label, got["reply"], f"{got['seconds']:.2f}",
                     f"{got['before']['VmHWM'] / MIB:.0f}",
                     f"{got['after']['VmHWM'] / MIB:.0f}",
                     f"{guess['idle'] / MIB:.0f}", f"{guess['peak'] / MIB:.0f}",
                     "yes" if got["alive"] else "no"])
    print(f"collection: {args.rows} x {args.dim} {args.index}; request: {args.queries} vectors "
          f"x k={args.k} = {slots} result slots")
    print_table(["budgets", "reply", "seconds", "VmHWM before MiB", "VmHWM after MiB",
                 "formula idle MiB", "formula peak MiB", "searcher alive"], rows)
    for label in cases:
        if "message" in outcomes[label]:
            print(f"{label}: {outcomes[label]['reply']}: {outcomes[label]['message']}")
    print(f"documented bound with default budgets (every budget spent at once): "
          f"{bound(budgets, args.rows, args.dim, args.index) / MIB:.0f} MiB")
    result.write()


if __name__ == "__main__":
    main()
