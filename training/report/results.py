"""The results the report tabulates, read back from MLflow, the single record of every run.

Each evaluation run says what it scored (``family``, ``tasks``, ``variant`` tags and the ``sigma``
param of a snapshot, training/evaluate/runs.py), so each lands in the row its model family's
record names (:meth:`training.models.family.Family.row_key`), never by its run's name. Per row and
task the latest run counts, averaged with its repeats (runs with the same training and evaluation
settings but the seeds, see ``make repeats``). The tagging tables take the models trained for
tagging; the retrieval tables the models trained for retrieval, or the tagging model where no
retrieval model of the row was run. The frequency baselines come from their pipeline job's latest
run, the upper bound from MCC's evaluation.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from common.embeddings import MANIFEST_NAME, EmbeddingsManifest
from common.metrics import NOPLACES, accuracy_metric_name, evaluation_metric_names, location_metric_name, \
    mlflow_metric_name
from common.tracking import EVALUATE, GROUP_PARENT_TAG, latest_finished_run
from training.evaluate.runs import FAMILY_TAG, TASKS_TAG, VARIANT_TAG
from training.models import FAMILIES, family_named

log = logging.getLogger(__name__)

#: Location-sensitive P@10 columns, as the paper's table orders them.
DISTANCE_COLUMNS = ["agnostic", "2500km", "750km", "200km", "25km", "1km"]
#: Rows that are not model families: the frequency baselines (pipeline job) and the upper bound.
BASELINES = {"global_frequency": "Global frequency", "country_frequency": "Country frequency",
             "town_frequency": "Town frequency"}
UPPER_BOUND = "upper_bound"


@dataclass
class Row:
    """One row of the result tables: a model (or baseline) and its metrics over its runs."""

    label: str
    order: tuple[float, ...]
    #: Metric name -> mean over the runs.
    mean: dict[str, float]
    #: Metric name -> sample standard deviation over the runs (with 2 runs or more).
    sd: dict[str, float] = field(default_factory=dict)
    runs: int = 1
    family: Optional[str] = None
    sigma: Optional[float] = None
    #: Each run's metrics by the training seed of its chain (the findings compare rows seed by seed).
    by_seed: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "runs": self.runs, "mean": self.mean, "sd": self.sd,
                **({"sigma": self.sigma} if self.sigma is not None else {}),
                **({"by_seed": self.by_seed} if self.by_seed else {})}


#: Row key -> row, in no particular order (:func:`ordered` sorts).
Results = dict[str, Row]


@dataclass
class Tables:
    tagging: Results = field(default_factory=dict)
    retrieval: Results = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {name: {k: r.to_json() for k, r in ordered(rows)}
                for name, rows in (("tagging", self.tagging), ("retrieval", self.retrieval))}


def ordered(results: Results) -> list[tuple[str, Row]]:
    """Rows in the tables' order: baselines, the upper bound, then the families in the paper's
    order, each family's variants in its record's order, sigma snapshots from the largest sigma."""
    return sorted(results.items(), key=lambda kv: kv[1].order)


def summarise(repeats: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, sample sd) of each metric over repeats of one model (no sd from a single value)."""
    mean, sd = {}, {}
    for metric in sorted({k for r in repeats for k in r}):
        values = np.array([r[metric] for r in repeats if metric in r], dtype=float)
        mean[metric] = float(values.mean())
        if len(values) > 1:
            sd[metric] = float(values.std(ddof=1))
    return mean, sd


def baseline_results(metrics: Mapping[str, float]) -> Results:
    """The frequency-baselines job's metrics (``baselines/town/A_at_10_noplaces``) as rows."""
    found: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != "baselines" or not parts[2].startswith("A_at_"):
            continue
        _, level, metric = parts
        suffix = NOPLACES if metric.endswith(NOPLACES) else ""
        k = metric.removesuffix(NOPLACES).replace("A_at_", "")
        if not k.isdigit() or f"{level}_frequency" not in BASELINES:   # not a name this code logs
            continue
        found.setdefault(f"{level}_frequency", {})[accuracy_metric_name(int(k), suffix)] = value
    return {key: Row(BASELINES[key], (0, list(BASELINES).index(key)), m) for key, m in found.items()}


def family_row(family_name: str, variant: Optional[str], sigma: Optional[float],
               metrics: Sequence[Mapping[str, float]], seeds: Optional[Sequence[str]] = None) -> tuple[str, Row]:
    """The row (key, Row) of one model's runs, labelled and placed by its family's record;
    ``seeds``: each run's training seed, in the order of ``metrics``."""
    family = family_named(family_name)
    mean, sd = summarise(metrics)
    order = (1 + family.order, family.variant_order(variant), -(sigma if sigma is not None else 1.0))
    by_seed = {s: dict(m) for s, m in zip(seeds, metrics)} if seeds else {}
    return family.row_key(variant, sigma), Row(family.row_label(variant, sigma), order, mean, sd, len(metrics),
                                               family.name, sigma, by_seed)


def assign(groups: Mapping[tuple[str, str], tuple[Row, frozenset]]) -> Tables:
    """Each row key's runs into the tables: (row key, tasks) -> (row, tasks) groups; the tagging
    tables take the group trained for tagging, the retrieval tables the one trained for retrieval,
    else the tagging one."""
    tables = Tables()
    by_key: dict[str, dict[str, Row]] = {}
    for (key, _), (row, tasks) in groups.items():
        for task in tasks:
            by_key.setdefault(key, {})[task] = row
    for key, rows in by_key.items():
        if "tagging" in rows:
            tables.tagging[key] = rows["tagging"]
        if "retrieval" in rows or "tagging" in rows:
            tables.retrieval[key] = rows.get("retrieval") or rows["tagging"]
    return tables


def collect_results(tracking_uri: str) -> Tables:
    """The tables' rows from the evaluation runs and the frequency baselines in MLflow.

    Runs made on embeddings that have since been overwritten (their export id no longer matches the
    manifest on disk) are skipped, and so are runs that do not say what model they scored (made
    before runs recorded it); the log names both. The other runs of a row and task that repeat its
    latest run are averaged (mean, sample sd, number of runs)."""
    mlflow.set_tracking_uri(tracking_uri)
    wanted = {mlflow_metric_name(n): n for n in evaluation_metric_names()}
    groups: dict[tuple[str, str], list] = {}
    if mlflow.get_experiment_by_name(EVALUATE) is not None:
        runs = mlflow.search_runs(experiment_names=[EVALUATE], order_by=["attributes.start_time DESC"],
                                  filter_string="attributes.status = 'FINISHED'", output_format="list")
        current = _CurrentExports()
        stale: dict[str, int] = {}
        unnamed = 0
        for run in runs:
            tags = run.data.tags
            if tags.get(FAMILY_TAG) not in FAMILIES:
                unnamed += GROUP_PARENT_TAG not in tags
                continue
            sigma = float(run.data.params["sigma"]) if "sigma" in run.data.params else None
            key = (family_named(tags[FAMILY_TAG]).row_key(tags.get(VARIANT_TAG), sigma), tags.get(TASKS_TAG, ""))
            if current.matches(run):
                groups.setdefault(key, []).append(run)
            else:
                stale[key[0]] = stale.get(key[0], 0) + 1
        if stale:
            log.warning("report: skipped runs evaluated on embeddings since overwritten: %s",
                        ", ".join(f"{n} ({k})" for n, k in sorted(stale.items())))
        if unnamed:
            log.warning("report: skipped %d evaluation runs that do not say which model they scored (no %r tag: "
                        "made by an older version; evaluate the model again)", unnamed, FAMILY_TAG)
    settings = _Settings(mlflow.MlflowClient())
    rows: dict[tuple[str, str], tuple[Row, frozenset]] = {}
    upper: dict[str, float] = {}
    for (key, tasks), group in groups.items():
        latest = settings.of(group[0])
        repeats = [r for r in group if settings.of(r) == latest]
        tags, params = group[0].data.tags, group[0].data.params
        sigma = float(params["sigma"]) if "sigma" in params else None
        metrics = [{wanted[k]: v for k, v in r.data.metrics.items() if k in wanted} for r in repeats]
        seeds = [settings.seed_of(r) for r in repeats]
        rows[(key, tasks)] = (family_row(tags[FAMILY_TAG], tags.get(VARIANT_TAG), sigma, metrics, seeds)[1],
                              frozenset(t for t in tasks.split(",") if t))
        if not upper:     # the upper bound, measured by the latest evaluation of an image model's export
            upper = {location_metric_name(g): v for k, v in group[0].data.metrics.items()
                     for g in DISTANCE_COLUMNS if k == mlflow_metric_name(f"upper_bound/P@10_{g}")}
    tables = assign(rows)
    if upper:
        tables.retrieval[UPPER_BOUND] = Row("Upper bound", (0, len(BASELINES)), upper)
    baselines = latest_finished_run("pipeline/frequency_baselines")
    if baselines is not None:
        tables.tagging.update(baseline_results(baselines.data.metrics))
    return tables


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
_REPEAT_FREE = frozenset({"seed", "resume", "ckpt_path", "run_dir", "output_dir", "torch_threads"})


#: Directories a repeat may move: (token in compared settings, training-run tag, training-run parameter).
_DIRECTORIES = (("<output_dir>", "output_dir", "paths.output_dir"), ("<run_dir>", "run_dir", "run_dir"))


class _Settings:
    """An evaluation run's settings, for telling repeats apart from changed experiments: its own
    parameters and its training run's, without the seeds, and with paths inside the training run's
    own directory, or inside the output folder of its seed's chain, written relative to them (a
    repeat trains into a directory of its own, and the demo's seeds each train MCC and the LocSens
    models that read its export under an output folder of their own)."""

    def __init__(self, client):
        self._client = client
        self._train: dict[str, tuple[dict[str, str], list[tuple[str, str]]]] = {}

    def _train_run(self, run_id: Optional[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The training run's parameters, and the spellings of its run and output directories, each
        with the token that replaces it in compared settings (longest first: the run directory is
        inside the output directory)."""
        if not run_id:
            return {}, []
        if run_id not in self._train:
            try:
                data = self._client.get_run(run_id).data
            except MlflowException:   # the training run was deleted: compare evaluation settings only
                self._train[run_id] = ({}, [])
            else:
                dirs: dict[str, str] = {}
                for token, tag, param in _DIRECTORIES:
                    for d in filter(None, (data.tags.get(tag), data.params.get(param))):   # "./out" is "out"
                        dirs.update({d.rstrip("/"): token, os.path.normpath(d): token})
                longest_first = sorted(dirs.items(), key=lambda kv: len(kv[0]), reverse=True)
                self._train[run_id] = (dict(data.params), longest_first)
        return self._train[run_id]

    def seed_of(self, run) -> str:
        """The training seed of the run that made the evaluated model (its run id if none is known)."""
        return self._train_run(run.data.tags.get("train_run_id"))[0].get("seed") or run.info.run_id

    def of(self, run) -> frozenset:
        train, run_dirs = self._train_run(run.data.tags.get("train_run_id"))
        params = {f"train.{k}": v for k, v in train.items()}
        params.update({f"eval.{k}": v for k, v in run.data.params.items()})
        for d, name in run_dirs:   # a whole path component only: "out/locsens" is not inside "out/locsens_raw"
            inside = re.compile(re.escape(d) + r"(?=/|$)")
            params = {k: inside.sub(name, v) for k, v in params.items()}
        return frozenset((k, v) for k, v in params.items() if not _repeat_free(k))


def _repeat_free(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in _REPEAT_FREE or last.endswith("_seed")
