"""MLflow bookkeeping shared by the Spark jobs, training and evaluation.

Every stage records one run in an experiment named after the stage, with the resolved config as
flattened params and as a YAML artifact. The tracking store is SQLite by default (the file store
is deprecated); artifacts go to an explicit local root so runs stay readable by ``mlflow ui``.
Imports neither Spark nor torch.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

# Usage telemetry off in everything the project starts (users' machines are often offline and their
# data is theirs); set MLFLOW_DISABLE_TELEMETRY=false to allow it. Read by MLflow when it would send.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402

log = logging.getLogger(__name__)

#: The experiment tag MLflow's UI reads to decide what an experiment is: these are model-training
#: experiments, so the UI opens on their runs (without it, on a GenAI traces overview).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: The experiment tag the UI shows as its description.
DESCRIPTION_TAG = "mlflow.note.content"
DESCRIPTIONS = {
    "train": "Training runs (python -m training.run): MCC, MLC, HER, LocSens and the factorised model; "
             "config, per-epoch losses, checkpoints.",
    "evaluate": "Evaluation runs: the paper's tagging and retrieval metrics (docs/evaluation.md) per model, "
                "sigma snapshot and frequency baseline; compare P@10 per granularity here.",
    "report": "The report (python -m training.report): tables beside the paper's numbers, figures.",
    "search": "Indexed galleries for python -m training.search: photos, index kind, the models that score them.",
}

#: MLflow refuses param values longer than this.
_MAX_PARAM_CHARS = 6000
_PARAM_BATCH = 100


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (MLflow params are flat strings)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def check_uri(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in tracking_uri or tracking_uri.startswith("file:"):
        raise ValueError(
            f"mlflow tracking uri {tracking_uri!r}: the file store is deprecated; use "
            "sqlite:///path/mlruns.db or an http(s):// tracking server"
        )
    return tracking_uri


def describe(name: str) -> str:
    """The one-line description of the experiment ``name`` (pipeline jobs: ``<prefix>/<job>``)."""
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    job = name.rsplit("/", 1)[-1]
    return f"Spark job {job} (spark-submit jobs/{job}.py): rows read, kept and rejected by reason, outputs."


def get_or_create_experiment(name: str, artifact_root: Optional[str]) -> str:
    """Experiment id for ``name``, creating it with an artifact location under ``artifact_root``;
    marked as a model-training experiment with its description (also on one made before)."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if artifact_root:
            location = Path(artifact_root, name.replace("/", "_")).resolve().as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it between our lookup and create
            pass
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise RuntimeError(f"mlflow: could not create experiment {name!r}")
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, DESCRIPTION_TAG: describe(name)}
    client = mlflow.MlflowClient()
    for key, value in wanted.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def log_params(params: Mapping[str, Any]) -> None:
    """Log flattened params in batches, truncating values MLflow would reject."""
    flat = {k: ("" if v is None else str(v))[:_MAX_PARAM_CHARS] for k, v in flatten(params).items()}
    items = sorted(flat.items())
    for i in range(0, len(items), _PARAM_BATCH):
        mlflow.log_params(dict(items[i:i + _PARAM_BATCH]))


@contextlib.contextmanager
def stage_run(experiment: str, run_name: str, config: Mapping[str, Any], *, tracking_uri: str,
              artifact_root: Optional[str] = None, tags: Optional[Mapping[str, str]] = None) -> Iterator[Any]:
    """One MLflow run for one stage: config as params and ``config.yaml``; yields the active run.

    Call it on rank 0 only in distributed training.
    """
    # MLflow's own progress and migration chatter is noise in job logs.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(check_uri(tracking_uri))
    experiment_id = get_or_create_experiment(experiment, artifact_root)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
        log_params(config)
        mlflow.log_dict(dict(config), "config.yaml")
        log.info("mlflow run %s in experiment %r (%s)", run.info.run_id, experiment, tracking_uri)
        yield run

