"""The paper's result tables (docs/evaluation.md) in Markdown, ours beside the paper's numbers in
every cell: pure formatting of :class:`training.report.results.Tables`."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from common.metrics import AGNOSTIC_P10, NOPLACES, QUERIES, TAGGING_KS, accuracy_metric_name, location_metric_name, \
    tagging_metric_names
from common.markdown import table
from training.models import family_named
from training.report.paper import PAPER_AGNOSTIC, PAPER_LOCATION, PAPER_NOPLACES, PAPER_SIGMA, PAPER_TAGGING
from training.report.results import DISTANCE_COLUMNS, Results, Row, Tables, ordered


def _cell(ours: Optional[float], paper: Optional[float], sd: Optional[float] = None) -> str:
    """``ours (paper)``, or ``mean ± sd (paper)`` over repeats."""
    o = "-" if ours is None or (isinstance(ours, float) and math.isnan(ours)) else f"{ours:.2f}"
    if sd is not None and o != "-":
        o += f" ± {sd:.2f}"
    p = "-" if paper is None else f"{paper:.2f}"
    return f"{o} ({p})"


def row_label(row: Row) -> str:
    """A model row's label with its number of runs (seeds), so that a single-seed row reads as one;
    a frequency baseline has no seed."""
    if row.family is None:
        return row.label
    return row.label + (f" ({row.runs} runs)" if row.runs > 1 else " (1 run, single seed)")


def _row(row: Row, columns: Sequence[str], paper: Sequence[Optional[float]]) -> list[str]:
    """A table row: the model's label, then its cells."""
    return [row_label(row)] + [_cell(row.mean.get(c), p, row.sd.get(c)) for c, p in zip(columns, paper)]


def tagging_table(results: Results) -> str:
    """A@1 / A@10 / A@50 / %pred / %cpred of the tagging rows, ours (paper)."""
    cols = tagging_metric_names()
    rows = [_row(r, cols, PAPER_TAGGING.get(k, (None,) * 5))
            for k, r in ordered(results) if any(c in r.mean for c in cols)]
    return table(["Method", "A@1", "A@10", "A@50", "%pred", "%cpred"], rows)


def noplaces_table(results: Results) -> str:
    cols = [accuracy_metric_name(k, NOPLACES) for k in TAGGING_KS]   # the paper's table has no %pred
    rows = [_row(r, cols, PAPER_NOPLACES.get(k, (None,) * 3))
            for k, r in ordered(results) if any(c in r.mean for c in cols)]
    return table(["Method", "A@1", "A@10", "A@50"], rows)


def agnostic_retrieval_table(results: Results) -> str:
    """One query per tag, for the location-agnostic (image) models, as the paper's table."""
    rows = [_row(r, [AGNOSTIC_P10], [PAPER_AGNOSTIC.get(k)]) for k, r in ordered(results)
            if r.family and family_named(r.family).exports and AGNOSTIC_P10 in r.mean]
    return table(["Method", "P@10"], rows)


def location_table(results: Results, suffix: str = "") -> str:
    """Location-sensitive P@10 per granularity: agnostic, continent ... street. ``suffix``
    ``"_noplaces"``: over the queries whose tag is not a place name (the paper has no such table)."""
    cols = [location_metric_name(g, suffix) for g in DISTANCE_COLUMNS]
    rows = []
    for key, r in ordered(results):
        paper = PAPER_SIGMA.get(r.sigma) if r.sigma is not None else PAPER_LOCATION.get(key)
        if any(c in r.mean for c in cols):
            rows.append(_row(r, cols, paper if paper and not suffix else (None,) * 6))
    header = ["Method", "Location agnostic", "Continent (2500 km)", "Country (750 km)", "Region (200 km)",
              "City (25 km)", "Street (1 km)"]
    return table(header, rows)


def queries_note(results: Results, suffix: str = "") -> str:
    """How many location-sensitive queries the retrieval table's rows were scored on, and a warning
    naming the rows when they were not all scored on the same number (not comparable)."""
    key = QUERIES + suffix
    counts = {r.label: int(r.mean[key]) for _, r in ordered(results) if key in r.mean}
    if not counts:
        return ""
    if len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        which = ("one per test image whose tag has enough test images" if not suffix
                 else "those whose tag is not a place name")
        return f"Every row is scored on the same {n:,} location-sensitive queries ({which})."
    detail = ", ".join(f"{label} {c:,}" for label, c in counts.items())
    return f"**Not comparable:** the rows were scored on different numbers of queries: {detail}."


def _summary_label(tagging: Optional[Row], retrieval: Optional[Row]) -> str:
    """A summary row's label: its runs, and the retrieval model's when that has another number of runs
    (the tagging and the retrieval columns come from two models)."""
    first = tagging or retrieval
    if tagging is None or retrieval is None or tagging is retrieval or tagging.runs == retrieval.runs \
            or first.family is None:
        return row_label(first)
    runs = lambda n: f"{n} runs" if n > 1 else "1 run, single seed"
    return f"{first.label} (tagging {runs(tagging.runs)}; retrieval {runs(retrieval.runs)})"


def summary_table(tables: Tables) -> str:
    """One table of the headline figures (the README's): every row's tagging A@1 / A@10 (all tags,
    and place names omitted) from its tagging model and P@10 at four granularities from its
    retrieval model, ours (paper)."""
    tagging = [accuracy_metric_name(1), accuracy_metric_name(10), accuracy_metric_name(10, NOPLACES)]
    distances = ["agnostic", "2500km", "25km", "1km"]
    rows = []
    for key, _ in ordered({**tables.retrieval, **tables.tagging}):
        t, r = tables.tagging.get(key), tables.retrieval.get(key)
        paper_t = PAPER_TAGGING.get(key, (None,) * 5)[:2] + (PAPER_NOPLACES.get(key, (None,) * 2)[1],)
        paper_r = PAPER_SIGMA.get(r.sigma) if r is not None and r.sigma is not None else PAPER_LOCATION.get(key)
        paper_r = [paper_r[DISTANCE_COLUMNS.index(g)] for g in distances] if paper_r else [None] * 4
        cells = [_cell(t.mean.get(c), p, t.sd.get(c)) if t else "" for c, p in zip(tagging, paper_t)]
        cells += [_cell(r.mean.get(location_metric_name(g)), p, r.sd.get(location_metric_name(g))) if r else ""
                  for g, p in zip(distances, paper_r)]
        if any(c and not c.startswith("- ") for c in cells):
            rows.append([_summary_label(t, r)] + cells)
    return table(["Method", "A@1", "A@10", "A@10, no place names", "P@10 agnostic", "2500 km", "25 km", "1 km"], rows)
