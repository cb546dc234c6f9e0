"""The filter benchmark end to end at a toy size: every path answers, and the result is recorded."""

from __future__ import annotations

import json

from bench import filters as bench_filters


def test_a_toy_run_records_every_comparison_and_the_plan_sweep(tmp_path) -> None:
    bench_filters.main(["--scale", "small", "--rows", "3000", "--segments", "2", "--dim", "16",
                        "--factory", "HNSW16", "--queries", "4", "--old-queries", "2",
                        "--share", "0.01", "--sweep", "0.01,0.3", "--results-dir",
                        str(tmp_path)])
    result = json.loads((tmp_path / "filters.json").read_text())
    assert [c["key"] for c in result["comparisons"]] == [
        "plan_vs_post", "plan_vs_raw_flat", "plan_vs_raw_hnsw", "plan_vs_rows"]
    figures = {f["key"]: f["value"] for f in result["figures"]}
    # The plan scans the accepted rows: exact, as the raw exact baseline is.
    assert figures["recall_plan"] == figures["recall_raw_flat"] == 1.0
    sweep = result["samples"]["plan_sweep"]
    assert [p["share"] for p in sweep] == [0.01, 0.3]
    assert all(p["scan_recall"] == 1.0 for p in sweep)
