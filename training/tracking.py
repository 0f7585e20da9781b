"""A training run's MLflow record (rank 0 only): the run itself (made, or continued on
``resume=true``), its config, the dataset it read and the runs it links to, and what the registry
step needs to serve its model (``serving/register.py`` logs the MLflow Model from these tags, so
that training never imports serving).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

import mlflow
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

from common.contract import MANIFEST_NAME
from common.embeddings import TAGS_FILE
from common.files import atomic_write, file_stamp
from common.tracking import (DESCRIPTIONS, TRAIN, check_uri, flatten, get_or_create_experiment, group_tags,
                             link_runs, log_dataset, run_record)
from training.evaluate.runs import model_tags
from training.models import FAMILIES
from training.models.streamed import StreamedModule
from training.ranks import is_rank_zero

log = logging.getLogger(__name__)

#: In a run dir: the MLflow run its training made, so that ``resume=true`` continues that run.
RUN_FILE = "mlflow_run.json"
#: Tags of a training run whose model can be served: what serving/register.py loads it from, and
#: the stamps (common.files.file_stamp) of those files when the run ended, so that a file rewritten
#: since (a later run in the same run_dir) is never served as this run's model.
CHECKPOINT_TAG, IMAGE_MODEL_TAG, VOCABULARY_TAG, SHARDS_TAG, STAMPS_TAG = (
    "best_checkpoint", "serving.image_model", "serving.vocabulary", "serving.shards_dir", "serving.stamps")


def train_description() -> str:
    """The training experiment's description, naming the model families it holds."""
    labels = [cls.family.label for cls in FAMILIES.values()]
    return f"{DESCRIPTIONS[TRAIN]} Models: {', '.join(labels)}."


def mlflow_logger(loggers: list) -> Optional[MLFlowLogger]:
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)


def continued_run(cfg: DictConfig) -> Optional[str]:
    """With ``resume=true`` and a checkpoint to resume from: the id of the MLflow run the
    interrupted training made (``run_dir/mlflow_run.json``), when it is in this tracking store."""
    path = Path(cfg.run_dir) / RUN_FILE
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    if not (cfg.get("resume") and path.exists() and last.exists()) or not is_rank_zero():
        return None
    saved = json.loads(path.read_text())
    if saved.get("tracking_uri") != cfg.paths.mlflow_tracking_uri:
        log.warning("resume: %s names a run in %s, not in %s; starting a new MLflow run", path,
                    saved.get("tracking_uri"), cfg.paths.mlflow_tracking_uri)
        return None
    try:
        mlflow.MlflowClient(check_uri(cfg.paths.mlflow_tracking_uri)).get_run(saved["run_id"])
    except Exception:
        log.warning("resume: MLflow run %s (%s) is gone; starting a new one", saved.get("run_id"), path)
        return None
    log.info("resume: continuing MLflow run %s", saved["run_id"])
    return saved["run_id"]


def start_training_run(cfg: DictConfig, loggers: list, model: StreamedModule,
                       continued: bool = False) -> Optional[MLFlowLogger]:
    """Create the training run on rank 0 (experiment made through common.tracking, so its
    artifacts sit with the other stages'), with the flattened config, config.yaml, what model it
    trains and the weights the backbone actually started from; or, ``continued``, note the
    resumption in the run it goes on with (its params stay those it started with: MLflow keeps a
    param's first value)."""
    mlf = mlflow_logger(loggers)
    if mlf is None or not is_rank_zero():
        return mlf

    mlflow.set_tracking_uri(check_uri(cfg.paths.mlflow_tracking_uri))
    # The logger finds the experiment by name.
    get_or_create_experiment(mlf._experiment_name, cfg.paths.get("mlflow_artifact_root"), train_description())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    client = mlf.experiment
    if continued:
        run = client.get_run(mlf.run_id)
        times = int(run.data.tags.get("resumed", "0")) + 1
        client.set_tag(mlf.run_id, "resumed", str(times))
        client.log_dict(mlf.run_id, resolved, f"config_resumed_{times}.yaml")
        return mlf
    mlf.log_hyperparams(flatten(resolved))
    client.log_dict(mlf.run_id, resolved, "config.yaml")
    atomic_write(Path(cfg.run_dir) / RUN_FILE, json.dumps({"run_id": mlf.run_id, "experiment_id": mlf.experiment_id,
                                                          "tracking_uri": cfg.paths.mlflow_tracking_uri}))
    tags = {"run_dir": str(Path(cfg.run_dir).resolve()), "output_dir": str(Path(cfg.paths.output_dir).resolve()),
            **model_tags(model.family, model.tasks, model.variant),
            **group_tags(mlf.experiment_id)}         # nested under the demo's parent run
    if getattr(model, "backbone_weights", None):
        tags["backbone_weights"] = model.backbone_weights
    for key, value in tags.items():
        client.set_tag(mlf.run_id, key, value)
    return mlf


def log_bad_files(mlf: MLFlowLogger, bad_files: list) -> None:
    """How many listed input files were left out (``data.on_bad_file=skip``), and which."""
    mlf.log_metrics({"data/bad_files": float(len(bad_files))})
    if bad_files:
        mlf.experiment.log_dict(mlf.run_id, {b.path: b.problem for b in bad_files}, "data/bad_files.json")


def record_training(mlf: MLFlowLogger, model: StreamedModule, datamodule, best: Optional[str],
                    embeddings_dir: Optional[str]) -> None:
    """What the finished training run made and read: its best checkpoint and export, the dataset
    it read (MLflow's dataset tracking) with a lineage link to the run that made it, and, for a
    family that is served, where the registry step finds the model's parts."""
    tags: dict[str, str] = {}
    if best:
        tags[CHECKPOINT_TAG] = str(Path(best).resolve())
    if embeddings_dir:
        tags["embeddings_dir"] = embeddings_dir
    if best and model.family.serves:
        tags.update(_serving_parts(model, datamodule, best, embeddings_dir))
    with mlflow.start_run(run_id=mlf.run_id) as run:
        mlflow.set_tags(tags)
        _log_inputs(datamodule)
        upstream = datamodule.manifest.extra.get("mlflow_run") or {}
        what = "embeddings" if getattr(datamodule, "embeddings_dir", None) else "shards"
        link_runs(mlflow.MlflowClient(), upstream=upstream, downstream=run_record(run.info), what=what)


def _serving_parts(model: StreamedModule, datamodule, best: str, embeddings_dir: Optional[str]) -> dict[str, str]:
    """The image model (MCC) checkpoint and the vocabulary a served model needs besides its own
    checkpoint: an image model's are its own; a location model's those of the export it read."""
    if model.family.exports:
        image_model, vocabulary = best, Path(embeddings_dir or "") / TAGS_FILE
    else:
        image_model = datamodule.manifest.extra.get("checkpoint") or ""
        vocabulary = Path(datamodule.embeddings_dir) / datamodule.manifest.tags_path
    shards = datamodule.shards_dir
    parts = {CHECKPOINT_TAG: str(Path(best).resolve()),
             IMAGE_MODEL_TAG: str(Path(image_model).resolve()) if image_model else "",
             VOCABULARY_TAG: str(vocabulary.resolve())}
    stamps = {path: file_stamp(path) for path in parts.values() if path}
    return {**parts, SHARDS_TAG: str(Path(shards).resolve()) if shards else "", STAMPS_TAG: json.dumps(stamps)}


def _log_inputs(datamodule: Any) -> None:
    """The dataset the run read: the embeddings export (LocSens, factorised; digest = its export id)
    or the shards (image models; digest = a hash of their manifest)."""
    embeddings = getattr(datamodule, "embeddings_dir", None)
    if embeddings is not None:
        log_dataset(embeddings, "mcc-embeddings", datamodule.manifest.export_id, context="training")
        return
    path = Path(datamodule.shards_dir) / MANIFEST_NAME
    digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else ""
    log_dataset(datamodule.shards_dir, "shards", digest, context="training")
