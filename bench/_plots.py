"""PNG plots from result files: QPS vs recall@10, and the produce-to-searchable CDF."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

# Without a Software entry (it names the matplotlib version) the same data gives the same file.
_PNG_METADATA = {"Software": None}
_COLORS = {"streamvec": "#1f77b4", "raw": "#d62728"}


def qps_recall(search: Mapping[str, Any], path: Path) -> bool:
    """Plot QPS against recall@10 for streamvec and raw FAISS; False if there is no sweep."""
    sweep = [p for p in (search.get("samples") or {}).get("sweep") or []
             if isinstance(p, Mapping)]
    if not sweep:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for who, label in (("streamvec", "streamvec via Redis"),
                       ("raw", "raw FAISS in-process, one index over the same rows")):
        # Joined in parameter order: noise may make recall dip where the parameter grows.
        points = [(p[f"{who}_recall"], p[f"{who}_qps"], p.get("value"))
                  for p in sorted(sweep, key=lambda p: p.get("value") or 0)]
        ax.plot([r for r, _, _ in points], [q for _, q, _ in points], marker="o",
                color=_COLORS[who], label=label)
        for recall, qps, value in points:
            ax.annotate(str(value), (recall, qps), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=_COLORS[who])
    param = sweep[0].get("param") or "index"
    params = search.get("params") or {}
    ax.set(xlabel="recall@10", ylabel="queries per second (log scale)", yscale="log",
           title=f"QPS vs recall@10, points labelled by {param} "
                 f"({params.get('rows', '?')} rows, {params.get('index', '?')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, path, search)
    return True


def freshness_cdf(freshness: Mapping[str, Any], path: Path) -> bool:
    """Plot the CDF of produce-to-searchable beside raw Kafka; False if there are no samples."""
    samples = freshness.get("samples") or {}
    curves = [(samples.get("streamvec_ms") or [], "streamvec produce to searchable", "streamvec"),
              (samples.get("raw_kafka_ms") or [], "raw Kafka produce to consume", "raw")]
    if not curves[0][0]:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for values, label, who in curves:
        if values:
            xs, ys = _cdf(values)
            ax.step(xs, ys, where="post", color=_COLORS[who], label=f"{label} (n={len(xs)})")
    ax.set(xlabel="milliseconds (log scale)", ylabel="fraction of probes", xscale="log",
           ylim=(0, 1.01), title="Freshness: time from produce to visible")
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="grey", linewidth=0.6, linestyle=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path, freshness)
    return True


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    xs = sorted(values)
    return xs, [(i + 1) / len(xs) for i in range(len(xs))]


def _save(fig: Any, path: Path, result: Mapping[str, Any]) -> None:
    scale = result.get("scale") or {}
    fig.text(0.99, 0.01, f"scale {scale.get('name', '?')}, {result.get('date', '')}",
             ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata=_PNG_METADATA)
    plt.close(fig)
