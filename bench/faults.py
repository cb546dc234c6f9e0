"""Faults: the longest outage survived, time back to freshness, a searcher's peak RSS, rows lost.

Runs the fault-injection suite (tests/faults, its own Redis and broker on free ports, killed,
stopped and restarted; a size-limited tmpfs as the segment store, so it runs as root) at the
chosen scale and reports the figures its checks recorded: per fault, the seconds from the
fault's end until a searcher answered a `session` query at every acknowledged offset; the
peak RSS (VmHWM) of the searcher after the hostile requests; rows lost over every check
(must be 0). A fault whose checks failed is shown as not passed (its outage does not count as
survived), and this benchmark then fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import subprocess
import tempfile

from bench.common import REPO, Result, machine_info, parse_scaled, print_table

DEFAULTS = {"small": {"faults_scale": "small"}, "full": {"faults_scale": "full"}}
FAULTS = ("baseline", "poison", "hostile", "redis_killed", "redis_stopped", "broker_killed",
          "broker_stopped", "disk_full", "corrupt_segments")


def run_suite(scale: str, figures: Path) -> int:
    """Run tests/faults at `scale`, its figures written to `figures`; pytest's exit status."""
    env = {**os.environ, "STREAMVEC_FAULTS_SCALE": scale, "STREAMVEC_FAULTS_FIGURES": str(figures),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "faults", "tests/faults",
            "-p", "no:cacheprovider"]
    return subprocess.run(argv, cwd=REPO, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print the figures and write bench/results/faults.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults-scale", choices=("small", "full"),
                        help="STREAMVEC_FAULTS_SCALE of the suite")
    args = parse_scaled(parser, DEFAULTS, argv)
    result = Result("faults", "Faults: outages, poison messages and hostile requests survived",
                    args)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figures.json"
        status = run_suite(args.faults_scale, path)
        got = json.loads(path.read_text()) if path.is_file() else {}
    passed = [f for f in FAULTS if got.get(f"{f}.passed")]
    # An outage counts as survived only when every check after it passed.
    longest = max((got.get(f"{f}.outage_s", 0) for f in passed), default=0)
    rows = [[f, "yes" if f in passed else "NO", got.get(f"{f}.outage_s", ""),
             got.get(f"{f}.fresh_s", "n/a"), got.get(f"{f}.errors", "")] for f in FAULTS]
    print(f"# machine: {machine_info()}")
    print_table(["fault", "passed", "outage s", "back to fresh s", "searches failed"], rows)
    print(f"longest outage survived: {longest} s; searcher peak RSS "
          f"under hostile load: {got.get('hostile.searcher_peak_rss_mb', 'n/a')} MiB; rows lost: "
          f"{got.get('rows_lost', 'n/a')}; faults passed: {len(passed)} of {len(FAULTS)}")
    result.figure("rows_lost", "rows lost (must be 0)", got.get("rows_lost", 0), "rows")
    result.figure("longest_outage_s", "longest outage survived", longest, "s")
    if "hostile.searcher_peak_rss_mb" in got:
        result.figure("hostile_peak_rss_mb", "searcher peak RSS under hostile requests",
                      got["hostile.searcher_peak_rss_mb"], "MiB")
    result.figure("faults_passed", f"faults passed of {len(FAULTS)}", len(passed), "faults")
    for f in FAULTS:
        if f"{f}.fresh_s" in got:
            result.figure(f"{f}_fresh_s", f"back to full freshness after {f}",
                          got[f"{f}.fresh_s"], "s")
    result.samples["figures"] = got
    if status != 0:
        missed = ", ".join(f for f in FAULTS if f not in passed)
        result.notes.append(f"the fault suite failed (pytest exit {status}); not passed: {missed}")
    result.write()
    return 0 if status == 0 and got.get("rows_lost", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
