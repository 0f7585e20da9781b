"""Training entry point: ``python -m training.run +experiment=mcc`` (or mlc, her).

:func:`train` is pure of Hydra's machinery (tests call it with a composed config): it fits,
exports embeddings with the best checkpoint and evaluates them, and returns the metrics.

Lightning's ``ddp`` strategy re-runs this command once per GPU: everything here runs on every
rank, except the side effects guarded for rank 0 (the MLflow runs, evaluation).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
import mlflow
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from common import failpoints
from common.files import atomic_write
from common.tracking import check_uri, flatten, get_or_create_experiment, group_tags, link_runs, run_record
from training.callbacks.failpoint import TrainBatchFailpoint
from training.errors import SetupError
from training.evaluate.after_fit import evaluate_after_fit
from training.evaluate.embeddings import embeddings_tags, evaluate_embeddings, log_evaluation

log = logging.getLogger(__name__)


def _build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """The configured data module or model; a setting it does not take (a ``+sample=`` mixin of
    another model family, a misspelt key) stops the run naming the setting."""
    try:
        return instantiate(cfg[key], **kwargs)
    except InstantiationException as exc:
        raise SetupError(f"{key} ({cfg[key].get('_target_')}): {exc.__cause__ or exc}; check the {key}.* settings "
                         "(+sample=image goes with mcc, mlc and her; +sample=locsens and locsens_sigma with LocSens)"
                         ) from exc


def _instantiate_group(group: Optional[DictConfig]) -> list[Any]:
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


#: In a run dir: the MLflow run its training made, so that ``resume=true`` continues that run.
RUN_FILE = "mlflow_run.json"


def _continued_run(cfg: DictConfig) -> Optional[str]:
    """With ``resume=true`` and a checkpoint to resume from: the id of the MLflow run the
    interrupted training made (``run_dir/mlflow_run.json``), when it is in this tracking store."""
    path = Path(cfg.run_dir) / RUN_FILE
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    if not (cfg.get("resume") and path.exists() and last.exists()) or rank_zero_only.rank != 0:
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


def _prepare_mlflow(cfg: DictConfig, loggers: list, model: pl.LightningModule,
                    continued: bool = False) -> Optional[MLFlowLogger]:
    """Create the training run on rank 0 (experiment made through common.tracking, so its
    artifacts sit with the other stages'), with the flattened config, config.yaml and the weights
    the backbone actually started from; or, ``continued``, note the resumption in the run it goes
    on with (its params stay those it started with: MLflow keeps a param's first value)."""
    mlf = next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)
    if mlf is None or rank_zero_only.rank != 0:
        return mlf

    mlflow.set_tracking_uri(check_uri(cfg.paths.mlflow_tracking_uri))
    name = next(c.experiment_name for c in cfg.logger.values() if c._target_.endswith("MLFlowLogger"))
    get_or_create_experiment(name, cfg.paths.get("mlflow_artifact_root"))  # the logger finds it by name
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if continued:
        run = mlf.experiment.get_run(mlf.run_id)
        times = int(run.data.tags.get("resumed", "0")) + 1
        mlf.experiment.set_tag(mlf.run_id, "resumed", str(times))
        mlf.experiment.log_dict(mlf.run_id, resolved, f"config_resumed_{times}.yaml")
        return mlf
    mlf.log_hyperparams(flatten(resolved))
    mlf.experiment.log_dict(mlf.run_id, resolved, "config.yaml")
    atomic_write(Path(cfg.run_dir) / RUN_FILE, json.dumps({"run_id": mlf.run_id, "experiment_id": mlf.experiment_id,
                                                          "tracking_uri": cfg.paths.mlflow_tracking_uri}))
    mlf.experiment.set_tag(mlf.run_id, "run_dir", str(Path(cfg.run_dir).resolve()))
    for key, value in group_tags(mlf.experiment_id).items():      # nested under the demo's parent run
        mlf.experiment.set_tag(mlf.run_id, key, value)
    if getattr(model, "backbone_weights", None):
        mlf.experiment.set_tag(mlf.run_id, "backbone_weights", model.backbone_weights)
    return mlf


def _resume_path(cfg: DictConfig, checkpoint: Optional[ModelCheckpoint]) -> Optional[str]:
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    if cfg.get("resume") and checkpoint is not None and checkpoint.dirpath:
        last = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        if last.exists():
            log.info("resuming from %s", last)
            return str(last)
        log.info("resume: no %s yet, starting afresh", last)
    return None


def _checkpoint_to_evaluate(cfg: DictConfig) -> str:
    """``train=false``: the checkpoint to evaluate (``ckpt_path``), which must exist."""
    path = cfg.get("ckpt_path")
    if not path:
        raise SetupError("train=false evaluates a trained model: set ckpt_path=<checkpoint>, e.g. "
                         f"ckpt_path={Path(cfg.run_dir) / 'checkpoints' / 'best.ckpt'}")
    if not Path(path).is_file():
        raise SetupError(f"ckpt_path={path}: no such checkpoint file")
    return str(Path(path).resolve())


def evaluation_export_dir(run_dir: str | Path, checkpoint: str) -> Path:
    """Where ``train=false`` exports a checkpoint's embeddings: a folder of its own, so that
    evaluating a checkpoint never overwrites a training run's export (which LocSens reads and
    evaluation runs refer to by export id)."""
    tag = hashlib.sha1(str(Path(checkpoint).resolve()).encode()).hexdigest()[:8]
    return Path(run_dir) / "evaluated" / f"{Path(checkpoint).stem}-{tag}" / "embeddings"


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, export and evaluate one model as configured; returns the metrics (rank 0 has them all).

    ``train=false`` evaluates ``ckpt_path`` instead of fitting (its embeddings, for MCC, MLC and
    HER, go to :func:`evaluation_export_dir`)."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    # MLflow reads the tracking URI when it is first imported by some loggers: set it first.
    os.environ["MLFLOW_TRACKING_URI"] = cfg.paths.mlflow_tracking_uri

    fitting = bool(cfg.get("train", True))
    evaluated = None if fitting else _checkpoint_to_evaluate(cfg)
    datamodule = _build(cfg, "data")
    bad_files = datamodule.check_files()         # a bad input file stops the run here, or is left out
    model = _build(cfg, "model", num_tags=datamodule.num_tags)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if os.environ.get(failpoints.ENV):               # fault tests only (common/failpoints.py)
        callbacks.append(TrainBatchFailpoint())
    continued = _continued_run(cfg) if fitting else None
    if continued:                                    # resume=true: the interrupted run goes on
        with open_dict(cfg):
            for c in cfg.logger.values():
                if c._target_.endswith("MLFlowLogger"):
                    c.run_id = continued
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    mlf = _prepare_mlflow(cfg, loggers, model, continued=bool(continued))
    if mlf is not None and trainer.is_global_zero:
        mlf.log_metrics({"data/bad_files": float(len(bad_files))})
        if bad_files:
            mlf.experiment.log_dict(mlf.run_id, {b.path: b.problem for b in bad_files}, "data/bad_files.json")
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)

    metrics: dict[str, float] = {}
    if fitting:
        trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_path(cfg, checkpoint), weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    best = (checkpoint.best_model_path if checkpoint is not None else "") if fitting else evaluated
    if fitting and best and checkpoint.best_model_score is not None:  # (ddp_spawn brings back the path only)
        metrics["best_val_loss"] = float(checkpoint.best_model_score)

    writer = next((c for c in callbacks if hasattr(c, "write_manifest")), None)
    embeddings_dir = None
    if cfg.get("export", True) and writer is not None:
        if not fitting:
            writer.output_dir = evaluation_export_dir(cfg.run_dir, evaluated)
        writer.extra = {"checkpoint": str(Path(best).resolve()) if best else None,
                        "task_name": cfg.task_name}
        if mlf is not None and trainer.is_global_zero:      # the runs that read the export link back
            writer.extra["mlflow_run"] = {"run_id": mlf.run_id, "experiment_id": mlf.experiment_id,
                                          "run_name": cfg.task_name}
        trainer.predict(model, datamodule=datamodule, ckpt_path=best or None, return_predictions=False,
                        weights_only=True)
        embeddings_dir = str(writer.output_dir.resolve())

    zero = trainer.is_global_zero
    if cfg.get("evaluate", True) and getattr(model, "evaluates_after_fit", False):
        # LocSens scores triplets itself (best checkpoint, or every sigma-stage snapshot), on every
        # rank: each scores its share of the queries, rank 0 logs.
        metrics.update(evaluate_after_fit(cfg, model, datamodule, callbacks, mlf.run_id if mlf and zero else None,
                                          checkpoint=evaluated, device=trainer.strategy.root_device,
                                          log_runs=zero))
    if not zero:
        return metrics
    if mlf is not None:
        if best:
            mlf.experiment.set_tag(mlf.run_id, "best_checkpoint", str(Path(best).resolve()))
        if embeddings_dir:
            mlf.experiment.set_tag(mlf.run_id, "embeddings_dir", embeddings_dir)
    if cfg.get("evaluate", True) and embeddings_dir:
        results = evaluate_embeddings(embeddings_dir, shards_dir=datamodule.shards_dir, **cfg.evaluation)
        metrics.update(results)
        for k, v in results.items():
            log.info("%s = %.3f", k, v)
        if mlf is not None:
            eval_id = log_evaluation(
                results, {"evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True),
                          "embeddings_dir": embeddings_dir, "model": cfg.model._target_,
                          "task_name": cfg.task_name},
                tracking_uri=cfg.paths.mlflow_tracking_uri,
                artifact_root=cfg.paths.get("mlflow_artifact_root"), run_name=cfg.task_name,
                tags={"train_run_id": mlf.run_id, **embeddings_tags(embeddings_dir)})
            mlf.experiment.set_tag(mlf.run_id, "eval_run_id", eval_id)
    if mlf is not None:
        _log_model_and_inputs(cfg, model, datamodule, mlf.run_id, best, embeddings_dir)
        mlf.finalize("success")
    _write_metrics(Path(cfg.run_dir), metrics)
    return metrics


def _log_model_and_inputs(cfg: DictConfig, model: pl.LightningModule, datamodule, run_id: str,
                          best: Optional[str], embeddings_dir: Optional[str]) -> None:
    """The training run's dataset and, with ``log_model``, its model as an MLflow Model
    (training/serving/pyfunc.py): MCC with its vocabulary; LocSens or the factorised model with the
    MCC it reads, so one model takes an image and a location."""
    from training.serving import pyfunc

    with mlflow.start_run(run_id=run_id) as run:
        pyfunc.log_inputs(datamodule)
        upstream = datamodule.manifest.extra.get("mlflow_run") or {}
        what = "embeddings" if getattr(datamodule, "embeddings_dir", None) else "shards"
        link_runs(mlflow.MlflowClient(), upstream=upstream, downstream=run_record(run.info), what=what)
        if not (cfg.get("log_model", True) and best):
            return
        if type(model).__name__ == "MCC" and embeddings_dir:
            uri = pyfunc.log_model("mcc", mcc_checkpoint=best, vocabulary=str(Path(embeddings_dir) / "tags.parquet"),
                                   shards_dir=datamodule.shards_dir)
        elif getattr(model, "evaluates_after_fit", False):
            manifest = datamodule.manifest
            mcc = manifest.extra.get("checkpoint")
            if not mcc or not Path(mcc).is_file():
                log.warning("no model logged: the MCC checkpoint %s the embeddings came from is gone", mcc)
                return
            uri = pyfunc.log_model("location", mcc_checkpoint=mcc, tagger_checkpoint=best,
                                   vocabulary=str(Path(datamodule.embeddings_dir) / manifest.tags_path),
                                   shards_dir=datamodule.shards_dir)
        else:
            return                       # MLC and HER: their export is their usable form
        mlflow.set_tag("model_uri", uri)
        log.info("logged the model: %s", uri)


def _write_metrics(run_dir: Path, metrics: dict[str, float]) -> None:
    """``metrics.json`` in the run dir, written last and atomically: a finished run's marker
    (``make demo`` skips stages that have one)."""
    atomic_write(run_dir / "metrics.json", json.dumps({k: float(v) for k, v in metrics.items()}, indent=2,
                                                      sort_keys=True))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train.yaml")
def main(cfg: DictConfig) -> Optional[float]:
    try:
        metrics = train(cfg)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("best_val_loss")


if __name__ == "__main__":
    main()
