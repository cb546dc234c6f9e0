"""Helpers shared by the benchmarks: scale, adaptive timing, tables and the JSON result files.

Every benchmark prints its tables and also writes bench/results/<name>.json through `Result`:

    {"schema": 1, "name": "search", "title": ..., "date": ISO-8601 UTC, "duration_s": ...,
     "revision": git commit, "machine": {cpu, cores, ..., faiss, kafka_broker},
     "scale": {"name": "small" | "full", "modified": [params given other than the scale's]},
     "params": {flag: value}, "figures": [{key, label, value, unit}],
     "comparisons": [{key, label, value, baseline, baseline_label, unit, ratio, goal}],
     "summary": [comparison keys for the README table], "samples": {name: list}, "notes": [...]}

`ratio` is value / baseline, both as stored: for rates above 1 is faster than the baseline, for
latencies above 1 is slower. Numbers are rounded to 4 significant digits when recorded, so a
report shows exactly what the file holds. bench/report.py renders these files.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._machine import machine_facts, machine_line
from streamvec import files

SCHEMA = 1
SCALES = ("small", "full")
SCALE_ENV = "STREAMVEC_BENCH_SCALE"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
_NOT_PARAMS = frozenset({"scale", "results_dir", "scale_modified"})

__all__ = ["SCALES", "Result", "Timing", "machine_facts", "machine_info", "measure_all",
           "parse_scaled", "percentile", "print_table", "raw_faiss_build", "sig", "si"]


def machine_info() -> str:
    """One line naming CPU, cores, memory, OS, Python, numpy and faiss, to print with results."""
    return machine_line(machine_facts())


def parse_scaled(parser: argparse.ArgumentParser, defaults: Mapping[str, Mapping[str, Any]],
                 argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags whose defaults come from the scale (--scale, $STREAMVEC_BENCH_SCALE, full).

    `defaults` maps each of SCALES to {dest: value}. The namespace also gets `scale`,
    `results_dir` and `scale_modified` (the dests given a value other than the scale's).
    """
    env = os.environ.get(SCALE_ENV, "full").strip() or "full"
    if env not in SCALES:
        parser.error(f"{SCALE_ENV} must be one of {', '.join(SCALES)}, not {env!r}")
    parser.add_argument("--scale", choices=SCALES, default=env,
                        help="preset of every size that names two defaults "
                        f"[env {SCALE_ENV}; default full]")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="folder of the JSON result file (default bench/results)")
    for action in parser._actions:  # argparse keeps no public list; help must show both scales
        if action.dest in defaults[SCALES[0]]:
            sizes = ", ".join(f"{scale} {defaults[scale][action.dest]}" for scale in SCALES)
            action.help = f"{action.help or action.dest} (default: {sizes})"
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**defaults[known.scale])
    args = parser.parse_args(argv)
    args.scale_modified = sorted(k for k, v in defaults[args.scale].items()
                                 if getattr(args, k) != v)
    return args


def sig(value: float | int | None, digits: int = 4) -> float | int | None:
    """`value` rounded to `digits` significant digits; ints and None pass; NaN/Inf become None."""
    if value is None or isinstance(value, bool | int):
        return value
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def raw_faiss_build(vectors: Any, factory: str, metric: str = "l2") -> Any:
    """The raw FAISS baseline of a build: index_factory, train, add, with the indexer's HNSW
    breadth (efConstruction) so both sides do the same work."""
    import faiss
    import numpy as np

    from indexer import build

    built = faiss.index_factory(vectors.shape[1], factory, build.faiss_metric(metric))
    hnsw = getattr(faiss.downcast_index(built), "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = build.HNSW_EF_CONSTRUCTION
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if not built.is_trained:
        built.train(x)
    built.add(x)
    return built


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of samples: a value that was observed."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Result:
    """What one run of a benchmark measured; `write()` saves it as results/<name>.json."""

    def __init__(self, name: str, title: str, args: argparse.Namespace,
                 settings: Any = None) -> None:
        self.name, self.title = name, title
        self.results_dir = Path(getattr(args, "results_dir", RESULTS_DIR))
        self.scale = {"name": getattr(args, "scale", "custom"),
                      "modified": list(getattr(args, "scale_modified", []))}
        self.params = {k: _plain(v) for k, v in sorted(vars(args).items()) if k not in _NOT_PARAMS}
        self.settings = settings
        self.figures: list[dict[str, Any]] = []
        self.comparisons: list[dict[str, Any]] = []
        self.summary: list[str] = []
        self.samples: dict[str, Any] = {}
        self.notes: list[str] = []
        self._started = time.perf_counter()
        self._date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def figure(self, key: str, label: str, value: float, unit: str) -> float | None:
        """Record an absolute figure; return it as stored (rounded)."""
        stored = sig(value)
        self.figures.append({"key": key, "label": label, "value": stored, "unit": unit})
        return stored

    def compare(self, key: str, label: str, value: float, baseline: float, unit: str,
                baseline_label: str, *, goal: str | None = None,
                summary: bool = False) -> float | None:
        """Record a figure beside its raw baseline; return the ratio value / baseline."""
        ours, raw = sig(value), sig(baseline)
        ratio = round(ours / raw, 3) if ours is not None and raw else None
        self.comparisons.append({"key": key, "label": label, "value": ours, "baseline": raw,
                                 "baseline_label": baseline_label, "unit": unit,
                                 "ratio": ratio, "goal": goal})
        if summary:
            self.summary.append(key)
        return ratio

    def as_dict(self) -> dict[str, Any]:
        """The result file's content."""
        return {"schema": SCHEMA, "name": self.name, "title": self.title, "date": self._date,
                "duration_s": round(time.perf_counter() - self._started, 1),
                "revision": _revision(), "machine": machine_facts(self.settings),
                "scale": self.scale, "params": self.params, "figures": self.figures,
                "comparisons": self.comparisons, "summary": self.summary,
                "samples": _plain(self.samples), "notes": self.notes}

    def write(self) -> Path:
        """Write results/<name>.json atomically (temp file, then rename); return its path."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.name}.json"
        files.write_atomic(path, json.dumps(self.as_dict(), indent=1, allow_nan=False) + "\n",
                           durable=False)
        print(f"# result: {_shown(path)}")
        return path


def _plain(value: Any) -> Any:
    """JSON-ready copy: floats rounded to 4 significant digits, paths and numpy scalars plain."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return sig(value)
    return value


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _revision() -> str:
    """The git commit the run measured, with `+dirty` when the tree had changes.

    The result files are left out: `make bench` rewrites them one after another, and the
    benchmarks that run later would otherwise all call their tree dirty.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, text=True,  # noqa: S607
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",  # noqa: S607
                                ".", f":(exclude){RESULTS_DIR.relative_to(REPO).as_posix()}"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty.strip() else head


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds per call of a timed function: the best and the median repeat, and how measured."""

    best: float
    median: float
    calls: int
    repeats: int

    def rate(self, items_per_call: int) -> float:
        """Items per second at the best repeat (the least disturbed by other load)."""
        return items_per_call / self.best


def _ladder() -> Iterator[int]:
    base = 1
    while True:
        yield from (base, 2 * base, 5 * base)
        base *= 10


def _run(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def measure_all(fns: Sequence[Callable[[], object]], *, min_time: float = 0.05,
                repeats: int = 7) -> list[Timing]:
    """Seconds per call of each of `fns`: best and median of `repeats`, each >= min_time.

    As timeit, but the functions' repeats are taken in turn, for fair ratios.
    """
    # Interleaving spreads a burst of load from other processes over every function alike,
    # where timing them one after another would charge it to whichever ran then.
    enabled = gc.isenabled()
    gc.disable()  # a collection landing in one repeat would be noise, not the cost of fn
    try:
        for fn in fns:
            fn()  # warm caches and lazy imports outside the measurement
        # Calls per repeat grow 1, 2, 5, 10, ... until one repeat lasts min_time.
        calls = [next(c for c in _ladder() if c >= 10**7 or _run(fn, c) >= min_time) for fn in fns]
        per_call: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for fn, count, times in zip(fns, calls, per_call, strict=True):
                times.append(_run(fn, count) / count)
    finally:
        if enabled:
            gc.enable()
    return [Timing(min(t), statistics.median(t), c, repeats) for t, c in zip(per_call, calls,
                                                                             strict=True)]


def si(value: float, unit: str = "") -> str:
    """A number with an SI prefix and three significant digits, e.g. 1.23 M."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value / 1e-9:.3g} n{unit}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under headers as aligned columns: the first to the left, the rest right."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [value.rjust(width) for value, width in zip(values, widths, strict=True)]
        padded[0] = values[0].ljust(widths[0])
        return "  ".join(padded).rstrip()

    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))
