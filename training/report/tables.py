"""The paper's result tables (docs/evaluation.md), filled from MLflow, with the paper's numbers beside ours.

Results are read back from the tracking store, the single record of every run: the latest
evaluation run of each model (experiment ``evaluate``), averaged with its repeats under other
seeds, and the latest run of the frequency baselines (experiment ``pipeline/frequency_baselines``),
mapped to the project's metric names (``tagging/A@10``, ``retrieval/P@10_750km``). Pure formatting
below :func:`collect_results`.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from common.embeddings import MANIFEST_NAME, EmbeddingsManifest
from common.metrics import (AGNOSTIC_P10, NOPLACES, QUERIES, TAGGING_KS, accuracy_metric_name,
                            evaluation_metric_names, location_metric_name, mlflow_metric_name,
                            tagging_metric_names)
from common.tracking import latest_finished_run

Results = dict[str, dict[str, float]]          # model -> metric name -> value

log = logging.getLogger(__name__)

#: docs/evaluation.md: the paper's numbers on full YFCC100M (None: not reported).
PAPER_TAGGING = {
    "global_frequency": (1.82, 13.45, None, None, None), "country_frequency": (28.05, 46.63, 63.14, None, None),
    "town_frequency": (51.41, 65.49, 71.05, None, None), "mlc": (8.86, 30.59, None, None, None),
    "mcc": (20.32, 47.64, 68.05, 29.11, 15.15), "her": (15.83, 31.24, None, None, None),
    "locsens_zeroed": (15.92, 46.60, None, None, None), "locsens_raw": (28.10, 68.21, 85.85, 44.00, 24.04),
}
PAPER_NOPLACES = {
    "country_frequency": (3.80, 17.21, 41.60), "town_frequency": (16.97, 34.95, 47.53),
    "mcc": (15.15, 36.75, 51.80), "locsens_raw": (17.34, 44.45, 61.10),
}
PAPER_AGNOSTIC = {"mlc": 1.01, "mcc": 14.07, "her": 7.02}
#: Location-sensitive P@10: agnostic, 2500, 750, 200, 25, 1 km.
PAPER_LOCATION = {
    "upper_bound": (100, 96.08, 90.51, 80.31, 64.52, 42.46), "mcc": (42.18, 29.23, 24.20, 18.34, 13.25, 4.66),
    "her": (37.36, 25.03, 20.27, 15.51, 11.23, 3.65), "mlc": (5.28, 2.54, 1.65, 1.00, 0.62, 0.17),
    "locsens_zeroed": (40.05, 28.32, 24.34, 18.44, 12.79, 3.74), "locsens_raw": (32.74, 28.42, 25.52, 21.83, 15.53, 4.83),
    "locsens_dropout": (36.95, 30.42, 26.14, 20.46, 14.28, 4.64),
}
#: The paper's location-sampling model at each sigma it reports, same columns.
PAPER_SIGMA = {
    1.0: (40.60, 28.40, 23.84, 18.16, 13.04, 4.13), 0.1: (40.03, 29.30, 24.36, 18.83, 13.46, 4.22),
    0.05: (39.80, 31.25, 25.76, 19.58, 13.78, 4.30), 0.01: (37.05, 31.27, 26.65, 20.14, 14.15, 4.44),
    0.0: (35.95, 30.61, 27.00, 21.39, 14.75, 4.83),
}
LABELS = {
    "global_frequency": "Global frequency", "country_frequency": "Country frequency", "town_frequency": "Town frequency",
    "mlc": "MLC", "mcc": "MCC", "her": "HER", "upper_bound": "Upper bound", "locsens_zeroed": "LocSens - zeroed locations",
    "locsens_raw": "LocSens - raw locations", "locsens_dropout": "LocSens - dropout",
    "factorised": "Factorised (image-tag + location-tag)",
}
#: Rows in table order; the location-sampling snapshots follow, one row per sigma the runs
#: recorded (their evaluation runs' ``sigma`` parameter), from the largest sigma down.
#: ``factorised`` (not in the paper) is one model trained for both tasks: its run fills its row in
#: the tagging and the retrieval tables, with "-" for the paper.
ORDER = ["global_frequency", "country_frequency", "town_frequency", "upper_bound", "mlc", "mcc", "her",
         "locsens_zeroed", "locsens_raw", "locsens_dropout", "factorised"]
DISTANCE_COLUMNS = ["agnostic", "2500km", "750km", "200km", "25km", "1km"]
#: The paper trains separate models for its two tasks: tagging models (negatives replace the image or
#: the tag) in the tagging tables, retrieval models (negatives replace only the image) in the
#: retrieval table. Row -> the run that fills it in the retrieval table, when that run exists.
RETRIEVAL_SOURCE = {"locsens_raw": "locsens_raw_retrieval", "locsens_zeroed": "locsens_zeroed_retrieval"}
#: Rows that are retrieval models only (the paper reports them in the retrieval table alone), with
#: every sigma snapshot.
RETRIEVAL_ONLY = frozenset({"locsens_dropout"})


def sigma_rows(results: Results) -> list[str]:
    """The sigma snapshots' rows, largest sigma first: the runs say which sigmas there are."""
    return sorted((n for n, m in results.items() if "sigma" in m), key=lambda n: -results[n]["sigma"])


def rows(results: Results) -> list[str]:
    """Every row the results can fill, in table order."""
    return [n for n in ORDER if n in results] + sigma_rows(results)


def label(results: Results, name: str) -> str:
    if "sigma" in results[name]:
        return f"LocSens - location sampling, sigma={results[name]['sigma']:g}"
    return LABELS[name]


def collect_results(tracking_uri: str) -> Results:
    """Metrics per model from MLflow: evaluation runs by run name, plus the latest baselines run.

    Runs made on embeddings that have since been overwritten (their export id no longer matches the
    manifest on disk) are skipped. The other runs of a name that repeat its latest run (same training
    and evaluation settings but the seeds, see ``make repeats``) are averaged: each metric is then
    the mean, with its sample standard deviation under ``<metric>_sd`` and the count under
    ``repeats``.
    """
    mlflow.set_tracking_uri(tracking_uri)
    out: Results = {}
    names = [n for n in ORDER if n not in ("global_frequency", "country_frequency", "town_frequency")]
    names += list(RETRIEVAL_SOURCE.values())
    wanted = {mlflow_metric_name(n): n for n in evaluation_metric_names()}
    if mlflow.get_experiment_by_name("evaluate") is not None:
        runs = mlflow.search_runs(experiment_names=["evaluate"], order_by=["attributes.start_time DESC"],
                                  filter_string="attributes.status = 'FINISHED'", output_format="list")
        current = _CurrentExports()
        groups: dict[str, list] = {}
        stale: dict[str, int] = {}
        for run in runs:
            name = run.data.tags.get("mlflow.runName", "")
            if name not in names and "sigma" not in run.data.params:
                continue
            if current.matches(run):
                groups.setdefault(name, []).append(run)
            else:
                stale[name] = stale.get(name, 0) + 1
        if stale:
            log.warning("report: skipped runs evaluated on embeddings since overwritten: %s",
                        ", ".join(f"{n} ({k})" for n, k in sorted(stale.items())))
        settings = _Settings(mlflow.MlflowClient())
        for name, group in groups.items():
            key = settings.of(group[0])
            repeats = [r for r in group if settings.of(r) == key]
            out[name] = summarise([{wanted[k]: v for k, v in r.data.metrics.items() if k in wanted} for r in repeats])
            if "sigma" in group[0].data.params:
                out[name]["sigma"] = float(group[0].data.params["sigma"])
            if name == "mcc":    # the upper bound is measured with MCC's evaluation
                latest = group[0].data.metrics
                out["upper_bound"] = {location_metric_name(g): v for k, v in latest.items()
                                      for g in DISTANCE_COLUMNS if k == mlflow_metric_name(f"upper_bound/P@10_{g}")}
    baselines = latest_finished_run("pipeline/frequency_baselines")
    if baselines is not None:
        out.update(baseline_results(baselines.data.metrics))
    return out


def summarise(repeats: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over repeats of one model; ``<metric>_sd`` and ``repeats`` when there
    are several."""
    if len(repeats) == 1:
        return dict(repeats[0])
    out: dict[str, float] = {"repeats": float(len(repeats))}
    for metric in sorted({k for r in repeats for k in r}):
        values = np.array([r[metric] for r in repeats if metric in r], dtype=float)
        out[metric] = float(values.mean())
        if len(values) > 1:
            out[f"{metric}_sd"] = float(values.std(ddof=1))
    return out


class _CurrentExports:
    """Which evaluation runs scored the embeddings now on disk: a run's ``embeddings_export_id`` tag
    must equal the export id in its ``embeddings_dir``'s manifest. Manifests written before export
    ids existed have none; then the run must have started after the manifest was written. Runs
    without a directory, or whose directory is gone (a report made elsewhere), cannot be checked
    and count as current."""

    def __init__(self):
        self._exports: dict[str, Optional[tuple[str, float]]] = {}   # directory -> (export id, mtime)

    def matches(self, run) -> bool:
        directory = run.data.tags.get("embeddings_dir") or run.data.params.get("embeddings_dir")
        if not directory:
            return True
        if directory not in self._exports:
            try:
                self._exports[directory] = (EmbeddingsManifest.read(directory).export_id,
                                            (Path(directory) / MANIFEST_NAME).stat().st_mtime)
            except FileNotFoundError:
                self._exports[directory] = None
        export = self._exports[directory]
        if export is None:
            return True
        export_id, written = export
        if export_id:
            return run.data.tags.get("embeddings_export_id", "") == export_id
        return run.info.start_time / 1000.0 >= written - 1.0


#: Settings that may differ between repeats of one experiment: seeds, how a run was resumed, where
#: it wrote, and how many CPU threads it used.
_REPEAT_FREE = frozenset({"seed", "resume", "ckpt_path", "run_dir", "torch_threads"})


class _Settings:
    """An evaluation run's settings, for telling repeats apart from changed experiments: its own
    parameters and its training run's, without the seeds, and with paths inside the training run's
    own directory written relative to it (a repeat may train into a directory of its own, as MCC's
    repeats do, since LocSens reads the demo's MCC export)."""

    def __init__(self, client):
        self._client = client
        self._train: dict[str, tuple[dict[str, str], list[str]]] = {}

    def _train_run(self, run_id: Optional[str]) -> tuple[dict[str, str], list[str]]:
        """The training run's parameters, and the spellings of its run directory."""
        if not run_id:
            return {}, []
        if run_id not in self._train:
            try:
                data = self._client.get_run(run_id).data
            except MlflowException:   # the training run was deleted: compare evaluation settings only
                self._train[run_id] = ({}, [])
            else:
                given = [d for d in (data.tags.get("run_dir"), data.params.get("run_dir")) if d]
                dirs = {d.rstrip("/") for d in given} | {os.path.normpath(d) for d in given}   # "./out" is "out"
                self._train[run_id] = (dict(data.params), sorted(dirs, key=len, reverse=True))
        return self._train[run_id]

    def of(self, run) -> frozenset:
        train, run_dirs = self._train_run(run.data.tags.get("train_run_id"))
        params = {f"train.{k}": v for k, v in train.items()}
        params.update({f"eval.{k}": v for k, v in run.data.params.items()})
        for d in run_dirs:   # a whole path component only: "out/locsens" is not inside "out/locsens_raw"
            inside = re.compile(re.escape(d) + r"(?=/|$)")
            params = {k: inside.sub("<run_dir>", v) for k, v in params.items()}
        return frozenset((k, v) for k, v in params.items() if not _repeat_free(k))


def _repeat_free(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in _REPEAT_FREE or last.endswith("_seed")


def baseline_results(metrics: Mapping[str, float]) -> Results:
    """The frequency-baselines job's metrics (``baselines/town/A_at_10_noplaces``) as models."""
    out: Results = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != "baselines" or not parts[2].startswith("A_at_"):
            continue
        _, level, metric = parts
        suffix = NOPLACES if metric.endswith(NOPLACES) else ""
        k = metric.removesuffix(NOPLACES).replace("A_at_", "")
        if not k.isdigit():      # a name this code does not log (a run from older code): not a table cell
            continue
        out.setdefault(f"{level}_frequency", {})[accuracy_metric_name(int(k), suffix)] = value
    return out


def _cell(ours: Optional[float], paper: Optional[float], sd: Optional[float] = None) -> str:
    """``ours (paper)``, or ``mean ± sd (paper)`` over repeats."""
    o = "-" if ours is None or (isinstance(ours, float) and math.isnan(ours)) else f"{ours:.2f}"
    if sd is not None and o != "-":
        o += f" ± {sd:.2f}"
    p = "-" if paper is None else f"{paper:.2f}"
    return f"{o} ({p})"


def _row(results: Results, name: str, columns: Sequence[str], paper: Sequence[Optional[float]]) -> list[str]:
    """A table row: the model's label (with its number of runs when repeated), then its cells."""
    m = results[name]
    text = label(results, name) + (f" ({int(m['repeats'])} runs)" if m.get("repeats", 1) > 1 else "")
    return [text] + [_cell(m.get(c), p, m.get(f"{c}_sd")) for c, p in zip(columns, paper)]


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tagging_table(results: Results) -> str:
    """A@1 / A@10 / A@50 / %pred / %cpred, ours (paper)."""
    cols = tagging_metric_names()
    rows = []
    for name in _tagging_rows(results):
        if any(c in results[name] for c in cols):
            rows.append(_row(results, name, cols, PAPER_TAGGING.get(name, (None,) * 5)))
    return _table(["Method", "A@1", "A@10", "A@50", "%pred", "%cpred"], rows)


def noplaces_table(results: Results) -> str:
    cols = [accuracy_metric_name(k, NOPLACES) for k in TAGGING_KS]   # the paper's table has no %pred
    rows = [_row(results, n, cols, PAPER_NOPLACES.get(n, (None,) * 3))
            for n in _tagging_rows(results) if any(c in results[n] for c in cols)]
    return _table(["Method", "A@1", "A@10", "A@50"], rows)


def _tagging_rows(results: Results) -> list[str]:
    return [n for n in rows(results) if n not in RETRIEVAL_ONLY and "sigma" not in results[n]]


def retrieval_results(results: Results) -> Results:
    """The results the retrieval table shows: each row from its retrieval model where one was run."""
    return {**results, **{row: results[src] for row, src in RETRIEVAL_SOURCE.items() if src in results}}


def agnostic_retrieval_table(results: Results) -> str:
    rows = [_row(results, n, [AGNOSTIC_P10], [PAPER_AGNOSTIC.get(n)])
            for n in ("mlc", "mcc", "her") if n in results and AGNOSTIC_P10 in results[n]]
    return _table(["Method", "P@10"], rows)


def location_table(results: Results, suffix: str = "") -> str:
    """Location-sensitive P@10 per granularity: agnostic, continent ... street. ``suffix``
    ``"_noplaces"``: over the queries whose tag is not a place name (the paper has no such table)."""
    results = retrieval_results(results)
    cols = [location_metric_name(g, suffix) for g in DISTANCE_COLUMNS]
    table = []
    for n in rows(results):
        paper = PAPER_SIGMA.get(results[n]["sigma"]) if "sigma" in results[n] else PAPER_LOCATION.get(n)
        if any(c in results[n] for c in cols):
            table.append(_row(results, n, cols, paper if paper and not suffix else (None,) * 6))
    header = ["Method", "Location agnostic", "Continent (2500 km)", "Country (750 km)", "Region (200 km)",
              "City (25 km)", "Street (1 km)"]
    return _table(header, table)


def queries_note(results: Results, suffix: str = "") -> str:
    """How many location-sensitive queries the retrieval table's rows were scored on, and a warning
    naming the rows when they were not all scored on the same number (not comparable)."""
    results = retrieval_results(results)
    key = QUERIES + suffix
    counts = {n: int(results[n][key]) for n in rows(results) if key in results[n]}
    if not counts:
        return ""
    if len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        which = ("one per test image whose tag has enough test images" if not suffix
                 else "those whose tag is not a place name")
        return f"Every row is scored on the same {n:,} location-sensitive queries ({which})."
    detail = ", ".join(f"{label(results, n)} {c:,}" for n, c in counts.items())
    return f"**Not comparable:** the rows were scored on different numbers of queries: {detail}."
