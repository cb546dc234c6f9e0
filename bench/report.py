"""Turn bench/results/*.json into bench/RESULTS.md, the plots and README.md's summary table.

`make bench` runs this after every benchmark. The README's table sits between the markers
`<!-- bench:start -->` and `<!-- bench:end -->` and is replaced on each run; without the
markers a "Performance" section holding them is appended first.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bench import _plots, _render
from bench._machine import machine_line
from streamvec import files

BENCH = Path(__file__).resolve().parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PLOTS = {"qps_recall.png": ("search", _plots.qps_recall, "QPS vs recall@10"),
         "freshness_cdf.png": ("freshness", _plots.freshness_cdf, "freshness CDF")}


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every readable result file in `folder`; the name defaults to the file's stem."""
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"report: skipping {path}: {exc}", file=sys.stderr)
            continue
        if not isinstance(data, dict):
            print(f"report: skipping {path}: not a JSON object", file=sys.stderr)
            continue
        data.setdefault("name", path.stem)
        results.append(data)
    return results


def make_plots(results: Sequence[Mapping[str, Any]], folder: Path) -> dict[str, Path]:
    """Draw each plot whose result file exists; return {benchmark name: plot path}."""
    by_name = {r.get("name"): r for r in results}
    made: dict[str, Path] = {}
    for filename, (name, draw, _) in PLOTS.items():
        if name in by_name and draw(by_name[name], folder / filename):
            made[name] = folder / filename
    return made


def results_markdown(results: Sequence[Mapping[str, Any]], plots: Mapping[str, Path],
                     where: Path) -> str:
    """RESULTS.md: how to read it, the summary, the machine, then one section per benchmark."""
    lines = ["# streamvec benchmark results", "",
             "Written by `bench/report.py` from `bench/results/*.json` (`make bench` runs every "
             "`bench/*.py`, then the report). Each benchmark measures its raw baseline in the "
             "same run on the same machine. Ratio = streamvec / baseline: for rates above 1 is "
             "faster than the baseline, for latencies above 1 is slower.", ""]
    if not results:
        return "\n".join(lines + ["No results yet: run `make bench`.", ""])
    lines += ["## Summary", ""] + _render.table(_render.SUMMARY_HEADERS,
                                               _render.summary_rows(results)) + [""]
    machine = _common_machine(results)
    if machine:
        lines += ["## Machine", "", f"Most results ran on: {machine}", ""]
    for result in _render.ordered(results):
        name = result.get("name")
        shown = {PLOTS[p.name][2]: _relative(p, where.parent) for n, p in plots.items()
                 if n == name}
        lines += _render.section(result, shown)
    return "\n".join(lines).rstrip("\n") + "\n"


def readme_block(results: Sequence[Mapping[str, Any]], results_md: Path, readme: Path) -> str:
    """The text between the README's markers: the summary table and the machine."""
    if not results:
        return "No benchmark results yet: run `make bench`."
    link = _relative(results_md, readme.parent)
    lines = _render.table(_render.SUMMARY_HEADERS, _render.summary_rows(results, link))
    machine = _common_machine(results)
    lines += ["", f"Machine: {machine}. Every figure above is copied from `bench/results/*.json`;"
              f" the full tables are in [{link}]({link})."]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with everything between the markers replaced by `block` (markers appended if none)."""
    start, end = text.find(START), text.find(END)
    if start < 0 and end < 0:
        text = text.rstrip("\n") + f"\n\n## Performance\n\n{START}\n{END}\n"
        start, end = text.find(START), text.find(END)
    if start < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise SystemExit(f"report: the README must hold exactly one {START} before one {END}")
    return text[:start + len(START)] + "\n" + block.strip("\n") + "\n" + text[end:]


def write_text(path: Path, text: str) -> None:
    """Write through a temp file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, text, durable=False)


def _common_machine(results: Sequence[Mapping[str, Any]]) -> str:
    lines = Counter(machine_line(dict(r["machine"])) for r in results
                    if isinstance(r.get("machine"), Mapping))
    return lines.most_common(1)[0][0] if lines else ""


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def main(argv: list[str] | None = None) -> int:
    """Read the results; write RESULTS.md, the plots and the README block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=BENCH / "results",
                        help="folder of result files (default bench/results)")
    parser.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md",
                        help="report to write (default bench/RESULTS.md)")
    parser.add_argument("--plots", type=Path, default=BENCH / "plots",
                        help="folder of the PNG plots (default bench/plots)")
    parser.add_argument("--readme", type=Path, default=BENCH.parent / "README.md",
                        help="README whose summary block is rewritten (default README.md)")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    plots = make_plots(results, args.plots)
    write_text(args.markdown, results_markdown(results, plots, args.markdown))
    readme = args.readme.read_text(encoding="utf-8")
    write_text(args.readme, replace_block(readme, readme_block(results, args.markdown,
                                                               args.readme)))
    print(f"report: {len(results)} result file(s) -> {args.markdown}, {args.readme}, "
          f"{len(plots)} plot(s) in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
