"""MLflow bookkeeping shared by the Spark jobs, training and evaluation.

Every stage records one run in an experiment named after the stage, with the resolved config as
flattened params and as a YAML artifact. The tracking store is SQLite by default (the file store
is deprecated); artifacts go to an explicit local root so runs stay readable by ``mlflow ui``.
Imports neither Spark nor torch.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import mlflow

log = logging.getLogger(__name__)

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


def get_or_create_experiment(name: str, artifact_root: Optional[str]) -> str:
    """Experiment id for ``name``, creating it with an artifact location under ``artifact_root``."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root:
        location = Path(artifact_root, name.replace("/", "_")).resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between our lookup and create
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
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

