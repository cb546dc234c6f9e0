"""Searcher cold start: seconds from exec to the first answer, and RSS, beside raw np.load + sha256.

Flat segments (the full scale: 1,000,000 384-d rows in 13 segments over 4 partitions) are
written straight into a scratch segment store with the segment writer and registered, so no
indexer runs; each segment covers one offset of its partition, and one placeholder message per
offset makes the topic end where the checkpoints do, so the live tail starts with nothing to
read. Then, --repeats times, a fresh `streamvec searcher` process is started while this process
(the client) has one eventual query already waiting on the stream: the time from exec to its
answer is the cold start, with every checksum verified and every row searchable. The
searcher's peak (VmHWM) and current RSS are read once it answered, against the bytes of the
vectors. The raw baseline, in this process: sha256 and np.load of the same vectors.npy files,
the least any loader that keeps the integrity guarantee must do. A phase breakdown (imports,
verify + open, the served set and its id map, the first exact scan) is measured in a child
process, so its memory stays out of both. The page cache is warm in every run (the files were
just written), as after a searcher restart on the same machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import hashlib
import json
import statistics
import subprocess
import time

import numpy as np
from confluent_kafka import Producer

from bench._stack import scratch_collection
from bench.common import REPO, Result, machine_info, parse_scaled, print_table
from indexer import publish
from indexer.registry import Registry
from indexer.segment import SealedRows
from indexer.store import SegmentStore
from searcher.client import Client
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 100_000, "repeats": 3},
    "full": {"rows": 1_000_000, "repeats": 3},
}
PARTITIONS = 4
ANSWER_TIMEOUT_S = 60.0  # the longest a request may wait
HASH_CHUNK = 16 << 20
PHASES = ("import", "verify_open", "serve_set", "first_scan")


def main(argv: list[str] | None = None) -> None:
    """Write the segments, time cold starts and the raw baseline, print and record them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows over all segments")
    parser.add_argument("--segments", type=int, default=13, help="Flat segments to write")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, help="searcher starts; the best and median count")
    args = parse_scaled(parser, DEFAULTS, argv)
    base = Settings()
    result = Result("coldstart", "Searcher cold start: exec to first answer", args, base)
    with scratch_collection(base, "bench-coldstart", dim=args.dim, partitions=PARTITIONS,
                            index="Flat") as (settings, spec, tmp):
        started = time.perf_counter()
        query, files = _write(settings, spec.name, args)
        write_s = time.perf_counter() - started
        vector_bytes = sum(f.stat().st_size for f in files)
        raw = [_raw(files) for _ in range(args.repeats)]
        runs = [_cold_start(settings, spec.name, query, tmp) for _ in range(args.repeats)]
        phases = _child_phases(settings, spec.name)
    _report(result, args, vector_bytes, write_s, raw, runs, phases)
    result.write()


def _write(settings: Settings, name: str, args: argparse.Namespace) -> tuple[np.ndarray, list]:
    """Write and register the segments; return a query vector and the vectors.npy files."""
    store = SegmentStore.from_settings(settings)
    registry = Registry(settings.redis_client(), name)
    epochs = {p: registry.claim(p) for p in range(PARTITIONS)}
    ends = dict.fromkeys(range(PARTITIONS), 0)
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, args.rows, args.segments + 1).astype(int)
    files = []
    for number, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        partition, rows = number % PARTITIONS, int(hi - lo)
        offset = ends[partition]
        sealed = SealedRows(
            partition, offset, offset + 1, np.array([f"r{i}".encode() for i in range(lo, hi)]),
            rng.standard_normal((rows, args.dim), dtype=np.float32),
            np.full(rows, offset, np.int64), np.zeros(rows, np.int64), [b""] * rows,
            np.zeros(0, "S1"))
        written = publish.write(store, name, 0, sealed, metric="l2", index="Flat")
        if not registry.register(written.record, epochs[partition]).ok:
            raise RuntimeError(f"segment {written.record.segment_id} was not registered")
        publish.mark(store, [written])
        files.append(store.folder(written.record.path) / "vectors.npy")
        ends[partition] = offset + 1
    _placeholders(settings, f"sv.{name}", ends)
    return rng.standard_normal(args.dim, dtype=np.float32), files


def _placeholders(settings: Settings, topic: str, ends: dict[int, int]) -> None:
    """One message per covered offset, so each partition's log ends at its checkpoint."""
    producer = Producer(settings.kafka_config())
    for partition, count in ends.items():
        for _ in range(count):
            producer.produce(topic, b"covered by a sealed segment", partition=partition)
    if producer.flush(30):
        raise RuntimeError(f"placeholder messages to {topic} were not delivered")


def _raw(files: list[Path]) -> float:
    """Seconds to sha256 and np.load every vectors.npy file, one after another."""
    started = time.perf_counter()
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        digest.hexdigest()
        np.load(file, allow_pickle=False)
    return time.perf_counter() - started


def _cold_start(settings: Settings, name: str, query: np.ndarray, tmp: Path) -> dict:
    """Start a searcher with a query waiting; return seconds to its answer and its RSS."""
    log = tmp / f"searcher-{time.monotonic_ns()}.log"
    with Client(settings=settings) as client, open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "streamvec", "searcher", "--collection",
                                 name], stdout=out, stderr=subprocess.STDOUT,
                                env=settings.child_env())
        try:
            answer = client.search(name, query, k=10, timeout=ANSWER_TIMEOUT_S)
            seconds = time.perf_counter() - started
            memory = _memory(proc.pid)
        except Exception:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(60)
    if len(answer.ids[0]) != 10:
        raise RuntimeError(f"the first answer has {len(answer.ids[0])} rows, not 10")
    return {"seconds": seconds, **memory}


def _memory(pid: int) -> dict:
    """VmHWM and VmRSS of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return {"hwm": fields["VmHWM"], "rss": fields["VmRSS"]}


# The child times the searcher's own imports first, before this module's heavier ones.
PHASES_CHILD = """import time
started = time.perf_counter()
import searcher.engine, searcher.server, streamvec.commands.searcher
imported = time.perf_counter() - started
import json, sys
from bench.coldstart import phases
print(json.dumps({"import": imported, **phases(sys.argv[1])}))
"""


def _child_phases(settings: Settings, name: str) -> dict:
    """The phase breakdown, measured in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PHASES_CHILD, name], env=settings.child_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def phases(name: str) -> dict:
    """Seconds of each step a searcher takes before its first answer after its imports.

    Verifying and opening runs as the searcher's watcher does: several segments at once.
    """
    from concurrent.futures import ThreadPoolExecutor

    from indexer.build import prepare
    from ingest import catalog
    from searcher import search, segments
    from searcher.segments import SegmentIdentity, SegmentSet
    from searcher.watcher import LOAD_THREADS

    settings, out = Settings(), {}
    client = settings.redis_client()
    spec = catalog.load_spec(client, name)
    records = Registry(client, name).segments()
    store = SegmentStore.from_settings(settings)
    mark = time.perf_counter()
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        loaded = list(pool.map(lambda r: segments.load(store, r, SegmentIdentity.of(spec)),
                               records))
    out["verify_open"] = time.perf_counter() - mark
    mark = time.perf_counter()
    served = SegmentSet()
    served.replace(set(), loaded)
    out["serve_set"] = time.perf_counter() - mark
    query = np.random.default_rng(1).standard_normal((1, spec.dim), dtype=np.float32)
    mark = time.perf_counter()
    for entry in served.entries():
        search.candidates(entry.source(), prepare(query, spec.metric), spec.metric, 18)
    out["first_scan"] = time.perf_counter() - mark
    return out


def _report(result: Result, args: argparse.Namespace, vector_bytes: int, write_s: float,
            raw: list[float], runs: list[dict], phases: dict) -> None:
    """Print the tables and record the figures."""
    seconds = [r["seconds"] for r in runs]
    best, median, raw_best = min(seconds), statistics.median(seconds), min(raw)
    hwm, rss = max(r["hwm"] for r in runs), max(r["rss"] for r in runs)
    mib = 2**20
    print(f"# cold start: {args.rows} rows x {args.dim}-d Flat in {args.segments} segments, "
          f"{PARTITIONS} partitions, {vector_bytes / mib:,.0f} MiB of vectors; written and "
          f"registered in {write_s:.1f} s; {args.repeats} searcher starts")
    print(f"# machine: {machine_info()}")
    print_table(["measure", "streamvec", "raw baseline", "ratio"], [
        ["exec to first answer s (best)", f"{best:.2f}", f"{raw_best:.2f}",
         f"{best / raw_best:.2f}x"],
        ["exec to first answer s (median)", f"{median:.2f}", f"{statistics.median(raw):.2f}",
         f"{median / statistics.median(raw):.2f}x"],
        ["peak RSS MiB (VmHWM)", f"{hwm / mib:,.0f}", f"{vector_bytes / mib:,.0f}",
         f"{hwm / vector_bytes:.2f}x"],
        ["RSS MiB after the answer", f"{rss / mib:,.0f}", f"{vector_bytes / mib:,.0f}",
         f"{rss / vector_bytes:.2f}x"]])
    print("raw baseline: sha256 + np.load of every vectors.npy in one process; RSS against "
          "the vectors' bytes (goals: <= 3 s to the first answer at 1M x 384, RSS <= 1.2x)")
    print("phases (fresh process, s): " + ", ".join(f"{k} {phases[k]:.2f}" for k in PHASES))
    result.compare("first_answer", f"exec to first answer, {args.rows} x {args.dim} Flat", best,
                   raw_best, "s", "sha256 + np.load of the vectors.npy files",
                   goal="<= 3 s at 1M x 384", summary=True)
    result.compare("peak_rss", "searcher peak RSS (VmHWM) after the first answer", hwm / mib,
                   vector_bytes / mib, "MiB", "bytes of the vectors", goal="ratio <= 1.2",
                   summary=True)
    result.compare("rss", "searcher RSS after the first answer", rss / mib, vector_bytes / mib,
                   "MiB", "bytes of the vectors")
    result.figure("first_answer_median_s", "exec to first answer, median", median, "s")
    for key in PHASES:
        result.figure(f"phase_{key}_s", f"phase: {key.replace('_', ' ')}", phases[key], "s")
    result.samples["first_answer_s"] = seconds
    result.samples["raw_s"] = raw


if __name__ == "__main__":
    main()
