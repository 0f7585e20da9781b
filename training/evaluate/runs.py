"""The MLflow run of an evaluation, for every evaluator (exported embeddings, LocSens, the
factorised model): one run in experiment ``evaluate`` with the config and the metrics under their
stable names, the export it scored as its dataset, what model it scored (family, tasks, variant:
the report's rows come from these tags), and links to the runs upstream.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import mlflow

from common import metrics as M
from common.embeddings import EmbeddingsManifest
from common.tracking import EVALUATE, link_runs, log_dataset, producer, run_record, stage_run
from training.models.family import Family

#: Tags an evaluation (and a training) run carries to say what model it is about.
FAMILY_TAG, TASKS_TAG, VARIANT_TAG = "family", "tasks", "variant"


def model_tags(family: Family, tasks: Sequence[str], variant: Optional[str] = None) -> dict[str, str]:
    """The tags that say which model a run is about: its family, the tasks it was trained for and
    its location variant."""
    return {FAMILY_TAG: family.name, TASKS_TAG: ",".join(tasks), **({VARIANT_TAG: variant} if variant else {})}


def embeddings_tags(embeddings_dir: str | Path, manifest: Optional[EmbeddingsManifest] = None) -> dict[str, str]:
    """Tags that tie an evaluation run to the export it scored (see ``EmbeddingsManifest.export_id``);
    ``manifest``: the directory's manifest when the caller has already read it."""
    manifest = manifest or EmbeddingsManifest.read(embeddings_dir)
    return {"embeddings_dir": str(Path(embeddings_dir).resolve()), "embeddings_export_id": manifest.export_id}


def log_evaluation(metrics: Mapping[str, float], config: Mapping[str, Any], *, tracking_uri: str,
                   artifact_root: Optional[str], run_name: str,
                   tags: Optional[Mapping[str, str]] = None) -> str:
    """One MLflow run holding an evaluation's config and metrics (call on rank 0); its run id."""
    tags = dict(tags or {})
    with stage_run(EVALUATE, run_name, config, tracking_uri=tracking_uri, artifact_root=artifact_root,
                   tags=tags) as run:
        if tags.get("embeddings_dir"):      # the export it scored, in MLflow's dataset tracking
            log_dataset(tags["embeddings_dir"], "mcc-embeddings", tags.get("embeddings_export_id", ""),
                        context="evaluation")
        mlflow.log_metrics(M.mlflow_metrics(metrics))
        for name, points in M.p10_by_km_series(metrics).items():
            for km, value in points:
                mlflow.log_metric(name, value, step=km)
        mlflow.log_dict(dict(metrics), "metrics.json")
        _link_upstream(tags)
        return run.info.run_id


def _link_upstream(tags: Mapping[str, str]) -> None:
    """Link the active evaluation run to the training run whose model it scored, or else to the run
    that exported the embeddings it scored (both ways, in the runs' descriptions)."""
    client = mlflow.MlflowClient()
    if tags.get("train_run_id"):
        try:
            upstream = run_record(client.get_run(tags["train_run_id"]).info)
        except Exception:
            return
        link_runs(client, upstream=upstream, downstream=producer(), what="model")
    elif tags.get("embeddings_dir"):
        try:
            upstream = EmbeddingsManifest.read(tags["embeddings_dir"]).extra.get("mlflow_run") or {}
        except (OSError, ValueError, TypeError):
            return
        link_runs(client, upstream=upstream, downstream=producer(), what="embeddings")
