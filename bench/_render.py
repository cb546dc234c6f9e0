"""Markdown from benchmark result files: the summary table and one section per benchmark.

Numbers are printed as the files hold them (they were rounded when recorded), so the README and
RESULTS.md show exactly the stored values. A file this module does not know, or one without the
usual keys, is still rendered: its numeric leaves become a table of figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench._machine import machine_line

# Summary rows follow this order; any other result comes after them, by name.
ORDER = ("codec", "produce", "indexer", "search", "freshness", "insert_while_search",
         "lifecycle")
SUMMARY_HEADERS = ("benchmark", "measure", "streamvec", "baseline", "baseline value", "ratio",
                   "scale")
_MAX_GENERIC_ROWS = 40


def num(value: Any) -> str:
    """A stored number as text: integral floats without '.0', others as Python writes them."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def quantity(value: Any, unit: str | None) -> str:
    """A number with its unit, e.g. '830 queries/s'."""
    return f"{num(value)} {unit}".rstrip() if unit else num(value)


def ratio(value: Any) -> str:
    """A ratio as '0.24x', or 'n/a'."""
    return "n/a" if value is None else f"{num(value)}x"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table; '|' inside cells is escaped."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


def ordered(results: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Results in ORDER first, then the others by name."""
    def key(r: Mapping[str, Any]) -> tuple[int, str]:
        name = str(r.get("name", ""))
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)
    return sorted(results, key=key)


def scale_text(result: Mapping[str, Any]) -> str:
    """The scale's name, with the parameters given other values than the scale's."""
    scale = result.get("scale")
    if not isinstance(scale, Mapping):
        return str(scale) if scale else "n/a"
    modified = scale.get("modified") or []
    return f"{scale.get('name')}" + (f" (modified: {', '.join(modified)})" if modified else "")


def summary_rows(results: Sequence[Mapping[str, Any]], link: str | None = None) -> list[list[str]]:
    """The summary table's rows: each result's summary comparisons, or its first figure."""
    rows = []
    for result in ordered(results):
        name = str(result.get("name", "?"))
        shown = f"[{name}]({link}#{name.lower()})" if link else name
        for item in _summary_items(result):
            if "baseline" in item:
                rows.append([shown, item.get("label", item.get("key")),
                             quantity(item.get("value"), item.get("unit")),
                             item.get("baseline_label", ""),
                             quantity(item.get("baseline"), item.get("unit")),
                             ratio(item.get("ratio")), scale_text(result)])
            else:
                rows.append([shown, item.get("label", item.get("key")),
                             quantity(item.get("value"), item.get("unit")), "", "", "",
                             scale_text(result)])
    return rows


def _summary_items(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    comparisons = [c for c in result.get("comparisons") or [] if isinstance(c, Mapping)]
    wanted = [c for key in result.get("summary") or [] for c in comparisons if c.get("key") == key]
    if wanted:
        return wanted
    if comparisons:
        return comparisons[:1]
    figures = _figures(result)
    return figures[:1]


def _figures(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The result's figures; for a file without them, its numeric leaves as figures."""
    figures = [f for f in result.get("figures") or [] if isinstance(f, Mapping)]
    if figures or "comparisons" in result:
        return figures
    skip = {"schema", "machine", "scale", "params", "samples", "date", "duration_s"}
    return [{"key": path, "label": path, "value": value, "unit": ""}
            for path, value in _leaves({k: v for k, v in result.items() if k not in skip})]


def _leaves(value: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def section(result: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    """One benchmark's RESULTS.md section: run facts, comparisons, figures, sample tables."""
    name = str(result.get("name", "?"))
    lines = [f"## {name}", "", f"{result.get('title', name)}.", ""]
    params = result.get("params") or {}
    lines += [f"- scale: {scale_text(result)}; parameters: "
              + (", ".join(f"`{k}={num(v)}`" for k, v in params.items()) or "none"),
              f"- run: {result.get('date', 'n/a')}, {num(result.get('duration_s'))} s, "
              f"revision {result.get('revision', 'n/a')}"]
    machine = result.get("machine")
    if isinstance(machine, Mapping):
        lines.append(f"- machine: {machine_line(dict(machine))}")
    lines.append("")
    comparisons = [c for c in result.get("comparisons") or [] if isinstance(c, Mapping)]
    if comparisons:
        lines += table(("measure", "streamvec", "baseline", "baseline value", "ratio", "goal"),
                       ([c.get("label", c.get("key")), quantity(c.get("value"), c.get("unit")),
                         c.get("baseline_label", ""), quantity(c.get("baseline"), c.get("unit")),
                         ratio(c.get("ratio")), c.get("goal") or ""] for c in comparisons))
        lines.append("")
    figures = _figures(result)
    if figures:
        lines += table(("figure", "value"), ([f.get("label", f.get("key")),
                                              quantity(f.get("value"), f.get("unit"))]
                                             for f in figures[:_MAX_GENERIC_ROWS]))
        lines.append("")
    lines += _sample_tables(result.get("samples") or {})
    for plot_name, plot_path in plots.items():
        lines += [f"![{plot_name}]({plot_path})", ""]
    lines += [f"- {note}" for note in result.get("notes") or []]
    return lines + ([""] if result.get("notes") else [])


def _sample_tables(samples: Mapping[str, Any]) -> list[str]:
    """Lists of records become tables; lists of numbers are only counted."""
    lines = []
    for key, value in samples.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            headers = list(dict.fromkeys(k for v in value for k in v))
            lines += [f"{key}:", ""]
            lines += table(headers, ([num(v.get(h)) if not isinstance(v.get(h), str)
                                      else v.get(h) for h in headers] for v in value))
            lines.append("")
        elif isinstance(value, list | Mapping):
            lines.append(f"- samples `{key}`: {len(value)} values in the result file")
    return lines + ([""] if lines and lines[-1] else [])
