"""bench/report.py: exact tables from fixed result files, the README block, the PNG plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MACHINE = {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "memory_gib": 8.0,
           "os": "Linux-test", "python": "3.11.7", "numpy": "2.0.0", "faiss": "1.9.0",
           "confluent_kafka": "2.6.0", "librdkafka": "2.6.0",
           "kafka_broker": "4.3.1 (local KRaft stack)", "redis_server": "7.0.15"}
MACHINE_LINE = ("Test CPU, 2 cores (2 usable), 8.0 GiB memory | Linux-test | Python 3.11.7 | "
                "numpy 2.0.0 | faiss 1.9.0 | Kafka 4.3.1 (local KRaft stack), librdkafka 2.6.0")


def result(name: str, comparisons: list[dict], summary: list[str], samples: dict | None = None,
           scale: str = "small") -> dict:
    return {"schema": 1, "name": name, "title": f"{name} title", "date": "2025-01-02T03:04:05Z",
            "duration_s": 12.5, "revision": "abc123", "machine": MACHINE,
            "scale": {"name": scale, "modified": []}, "params": {"rows": 1000},
            "figures": [{"key": "rss", "label": "peak RSS", "value": 250.5, "unit": "MiB"}],
            "comparisons": comparisons, "summary": summary, "samples": samples or {},
            "notes": []}


def comparison(key: str, label: str, value: float, baseline: float, unit: str, ratio: float,
               baseline_label: str = "raw") -> dict:
    return {"key": key, "label": label, "value": value, "baseline": baseline,
            "baseline_label": baseline_label, "unit": unit, "ratio": ratio, "goal": None}


SEARCH = result("search", [
    comparison("qps", "QPS via Redis", 830.5, 3462.0, "queries/s", 0.24, "raw FAISS"),
    comparison("recall_at_10", "recall@10", 0.99, 0.985, "", 1.005, "raw FAISS"),
], ["qps", "recall_at_10"], {"sweep": [
    {"param": "efSearch", "value": 16, "streamvec_qps": 900.0, "streamvec_recall": 0.95,
     "streamvec_p50_ms": 8.5, "streamvec_p99_ms": 17.25, "raw_qps": 5000.0, "raw_recall": 0.9},
    {"param": "efSearch", "value": 64, "streamvec_qps": 830.5, "streamvec_recall": 0.99,
     "streamvec_p50_ms": 9.0, "streamvec_p99_ms": 20.0, "raw_qps": 3462.0, "raw_recall": 0.985},
]})
FRESHNESS = result("freshness", [
    comparison("p99_ms", "produce to searchable, p99", 109.4, 55.61, "ms", 1.967),
], ["p99_ms"], {"streamvec_ms": [10.0, 20.5, 109.4], "raw_kafka_ms": [1.0, 2.5, 55.61]})
# Not one of the known benchmarks, and without a summary list: its first comparison is shown.
LIFECYCLE = result("lifecycle", [
    comparison("reindex", "reindex rows/s", 5000.0, 8000.0, "rows/s", 0.625, "raw FAISS build"),
    comparison("switch_p99", "p99 during switch", 30.0, 20.0, "ms", 1.5, "steady state"),
], [], scale="full")
# A file without the usual keys: its numeric leaves become figures.
FOREIGN = {"rows_per_s": 123.0, "nested": {"p99_ms": 4.5}, "label": "text is skipped"}

SUMMARY_ROWS = [
    "| benchmark | measure | streamvec | baseline | baseline value | ratio | scale |",
    "|---|---|---|---|---|---|---|",
    "| search | QPS via Redis | 830.5 queries/s | raw FAISS | 3462 queries/s | 0.24x | small |",
    "| search | recall@10 | 0.99 | raw FAISS | 0.985 | 1.005x | small |",
    "| freshness | produce to searchable, p99 | 109.4 ms | raw | 55.61 ms | 1.967x | small |",
    "| lifecycle | reindex rows/s | 5000 rows/s | raw FAISS build | 8000 rows/s | 0.625x | full |",
    "| zz_foreign | rows_per_s | 123 |  |  |  | n/a |",
]
README_HEAD = "# project\n\nintro\n\n## Performance\n\n"
README_TAIL = "\n\n![plot](bench/plots/qps_recall.png)\n\n## Layout\n\nafter\n"


def write_results(folder: Path, *results: tuple[str, dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in results:
        (folder / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


def run_report(tmp: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "report.py"), "--results", str(tmp / "results"),
         "--markdown", str(tmp / "bench" / "RESULTS.md"), "--plots", str(tmp / "bench" / "plots"),
         "--readme", str(tmp / "README.md")],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def make_workspace(tmp: Path) -> Path:
    write_results(tmp / "results", ("search", SEARCH), ("freshness", FRESHNESS),
                  ("lifecycle", LIFECYCLE), ("zz_foreign", FOREIGN))
    (tmp / "README.md").write_text(
        README_HEAD + "<!-- bench:start -->\n| old | table |\n<!-- bench:end -->" + README_TAIL,
        encoding="utf-8")
    return tmp


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A workspace reported twice: (folder, README after the first run, report's stdout)."""
    tmp = make_workspace(tmp_path_factory.mktemp("report"))
    run_report(tmp)
    first = (tmp / "README.md").read_text(encoding="utf-8")
    return tmp, first, run_report(tmp).stdout


def block(text: str) -> list[str]:
    start, end = text.index("<!-- bench:start -->"), text.index("<!-- bench:end -->")
    return text[start:end].splitlines()[1:]


def test_results_md_holds_the_exact_summary_rows_in_order(reported) -> None:
    workspace, _, _ = reported
    lines = (workspace / "bench" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(SUMMARY_ROWS[0])
    assert lines[start:start + len(SUMMARY_ROWS)] == SUMMARY_ROWS
    assert lines[start + len(SUMMARY_ROWS)] == ""
    assert f"Most results ran on: {MACHINE_LINE}" in lines


def test_results_md_sections_render_comparisons_figures_and_the_sweep(reported) -> None:
    workspace, _, _ = reported
    text = (workspace / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## Summary", "## Machine", "## search", "## freshness", "## lifecycle",
        "## zz_foreign"]
    assert ("| QPS via Redis | 830.5 queries/s | raw FAISS | 3462 queries/s | 0.24x |  |"
            in text)
    assert "| peak RSS | 250.5 MiB |" in text
    assert "| efSearch | 16 | 900 | 0.95 | 8.5 | 17.25 | 5000 | 0.9 |" in text
    assert "| p99 during switch | 30 ms | steady state | 20 ms | 1.5x |  |" in text
    assert "| nested.p99_ms | 4.5 |" in text
    assert "![QPS vs recall@10](plots/qps_recall.png)" in text
    assert "![freshness CDF](plots/freshness_cdf.png)" in text
    assert "- samples `streamvec_ms`: 3 values in the result file" in text


def test_readme_block_is_replaced_not_appended(reported) -> None:
    workspace, first, _ = reported
    text = (workspace / "README.md").read_text(encoding="utf-8")
    assert text == first
    assert text.count("<!-- bench:start -->") == 1 and text.count("<!-- bench:end -->") == 1
    assert "| old | table |" not in text
    assert text.startswith(README_HEAD + "<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->" + README_TAIL)
    link = "bench/RESULTS.md"
    expected = [SUMMARY_ROWS[0], SUMMARY_ROWS[1]] + [
        row.replace(f"| {name} |", f"| [{name}]({link}#{name}) |", 1)
        for row in SUMMARY_ROWS[2:]
        for name in [row.split(" | ")[0][2:]]]
    assert block(text) == [*expected, "",
                           f"Machine: {MACHINE_LINE}. Every figure above is copied from "
                           f"`bench/results/*.json`; the full tables are in [{link}]({link})."]


def test_readme_without_markers_gets_one_performance_section(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    (workspace / "README.md").write_text("# project\n\nintro\n", encoding="utf-8")
    run_report(workspace)
    run_report(workspace)
    text = (workspace / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# project\n\nintro\n\n## Performance\n\n<!-- bench:start -->\n")
    assert text.count("## Performance") == 1 and text.count("<!-- bench:start -->") == 1
    assert text.endswith("<!-- bench:end -->\n")


def test_plots_are_png_files(reported) -> None:
    workspace, _, stdout = reported
    for name in ("qps_recall.png", "freshness_cdf.png"):
        data = (workspace / "bench" / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert stdout.strip().endswith(f"2 plot(s) in {workspace / 'bench' / 'plots'}")


def test_no_results_leaves_a_placeholder_and_no_plots(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "README.md").write_text(README_HEAD + "<!-- bench:start -->\nold\n"
                                        "<!-- bench:end -->" + README_TAIL, encoding="utf-8")
    run_report(tmp_path)
    assert block((tmp_path / "README.md").read_text(encoding="utf-8")) == [
        "No benchmark results yet: run `make bench`."]
    assert not (tmp_path / "bench" / "plots").exists()


def test_a_result_written_by_bench_common_renders_with_its_stored_numbers(tmp_path: Path) -> None:
    # The writing side of the convention: values rounded to 4 significant digits on record,
    # the ratio computed from the stored numbers, the scale and its modified flags kept.
    script = (
        "import argparse, sys\n"
        "from bench.common import Result, parse_scaled\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--rows', type=int)\n"
        "args = parse_scaled(p, {'small': {'rows': 10}, 'full': {'rows': 1000}},"
        " ['--scale', 'small', '--rows', '12', '--results-dir', sys.argv[1]])\n"
        "r = Result('widget', 'Widget', args)\n"
        "r.compare('rate', 'widget rows/s', 123456.7, 61728.3, 'rows/s', 'raw widget',"
        " summary=True)\n"
        "r.write()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "results")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    stored = json.loads((tmp_path / "results" / "widget.json").read_text(encoding="utf-8"))
    assert stored["comparisons"] == [comparison("rate", "widget rows/s", 123500.0, 61730.0,
                                                "rows/s", 2.001, "raw widget")]
    assert (stored["scale"], stored["params"]) == ({"name": "small", "modified": ["rows"]},
                                                   {"rows": 12})
    (tmp_path / "README.md").write_text("<!-- bench:start -->\n<!-- bench:end -->\n",
                                        encoding="utf-8")
    run_report(tmp_path)
    assert block((tmp_path / "README.md").read_text(encoding="utf-8"))[2] == (
        "| [widget](bench/RESULTS.md#widget) | widget rows/s | 123500 rows/s | raw widget | "
        "61730 rows/s | 2.001x | small (modified: rows) |")


@pytest.mark.parametrize(("env", "expected"), [("full", "full 1000"), ("small", "small 10")])
def test_scale_comes_from_the_env_var_unless_a_flag_says(env: str, expected: str) -> None:
    script = (
        "import argparse\n"
        "from bench.common import parse_scaled\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--rows', type=int)\n"
        "d = {'small': {'rows': 10}, 'full': {'rows': 1000}}\n"
        "a = parse_scaled(p, d, [])\n"
        "b = parse_scaled(argparse.ArgumentParser(), {'small': {}, 'full': {}},"
        " ['--scale', 'small'])\n"
        "print(a.scale, a.rows, b.scale)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "STREAMVEC_BENCH_SCALE": env})
    assert (proc.returncode, proc.stdout) == (0, f"{expected} small\n"), proc.stderr


def test_an_unknown_scale_in_the_env_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "codec.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "STREAMVEC_BENCH_SCALE": "huge"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "codec.py: error: STREAMVEC_BENCH_SCALE must be one of small, full, not 'huge'")
