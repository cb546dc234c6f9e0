"""Helpers shared by the benchmarks: what machine ran them, adaptive timing, result tables."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata

import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        return f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown memory"


def _version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info() -> str:
    """One line naming CPU, cores, memory, OS, Python, numpy and faiss, to print with results."""
    cores = os.cpu_count() or 0
    # A container or taskset may allow fewer cores than the machine has.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return (
        f"{_cpu_model()}, {cores} cores ({usable} usable), {_memory_gib()} | "
        f"{platform.platform()} | Python {platform.python_version()} | numpy {np.__version__} | "
        f"faiss {_version('faiss-cpu', 'faiss-gpu', 'faiss')}"
    )


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


def measure(fn: Callable[[], object], *, min_time: float = 0.05, repeats: int = 7) -> Timing:
    """Seconds per fn() call, best and median of `repeats`, each of >= min_time (as timeit)."""
    return measure_all([fn], min_time=min_time, repeats=repeats)[0]


def measure_all(fns: Sequence[Callable[[], object]], *, min_time: float = 0.05,
                repeats: int = 7) -> list[Timing]:
    """Time several functions as `measure` does, their repeats taken in turn for fair ratios."""
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
