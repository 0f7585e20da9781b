"""Training entry point: ``python -m training.run +experiment=mcc`` (or any of conf/experiment/).

:func:`train` is pure of Hydra's machinery (tests call it with a composed config): it fits,
exports or scores as the model's family says, evaluates, and returns the metrics. The MLflow
record of the run is :mod:`training.tracking`'s.

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

from common import failpoints
from common.files import atomic_write
from training.callbacks.export import EmbeddingWriter
from training.callbacks.failpoint import TrainBatchFailpoint
from training.callbacks.topology import Topology
from training.errors import SetupError
from training.evaluate.after_fit import evaluate_after_fit
from training.evaluate.embeddings import evaluate_embeddings
from training.evaluate.runs import embeddings_tags, log_evaluation, model_tags
from training.launch import Launch, detect, may_have_peers, trainer_overrides
from training.models.family import EMBEDDINGS
from training.ranks import is_rank_zero
from training.tracking import continued_run, log_bad_files, record_training, start_training_run

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


def _settled_trainer(cfg: DictConfig, launch: Launch) -> dict[str, Any]:
    """The trainer settings the config leaves to this launch and machine (training/launch.py), and
    the GPU's fast matmul mode (TF32) unless ``matmul_precision`` says otherwise."""
    cuda = torch.cuda.is_available()
    overrides = trainer_overrides(cfg.trainer, launch, cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported())
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(str(cfg.matmul_precision))
    if launch.started_outside:
        log.info("launched by %s: %d node(s) x %d process(es)", launch.launcher, launch.nodes, launch.per_node)
    if overrides:
        log.info("trainer settings for this launch: %s", ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return overrides


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

    What follows the fit is the model family's (:class:`~training.models.family.Family`): an
    image model's embeddings are exported and evaluated from the export; a location model scores
    the split itself on every rank. ``train=false`` evaluates ``ckpt_path`` instead of fitting
    (an image model's embeddings then go to :func:`evaluation_export_dir`)."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    # MLflow reads the tracking URI when it is first imported by some loggers: set it first.
    os.environ["MLFLOW_TRACKING_URI"] = cfg.paths.mlflow_tracking_uri

    fitting = bool(cfg.get("train", True))
    evaluated = None if fitting else _checkpoint_to_evaluate(cfg)
    datamodule = _build(cfg, "data")
    # A bad input file stops the run here, or is left out. With several processes the ranks decide
    # together once they have met (datamodule.setup): a file bad on one node alone must not give
    # that rank another epoch plan.
    launch = detect(os.environ)
    deferred = fitting and may_have_peers(cfg.trainer, launch, os.environ, torch.cuda.device_count())
    bad_files = datamodule.check_files(defer=deferred)
    model = _build(cfg, "model", num_tags=datamodule.num_tags)
    family = model.family
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if os.environ.get(failpoints.ENV):               # fault tests only (common/failpoints.py)
        callbacks.append(TrainBatchFailpoint())
    continued = continued_run(cfg) if fitting else None
    if continued:                                    # resume=true: the interrupted run goes on
        with open_dict(cfg):
            for c in cfg.logger.values():
                if c._target_.endswith("MLFlowLogger"):
                    c.run_id = continued
    # Loggers on rank 0 only: under torchrun or srun every rank starts at once, and each one opening
    # the tracking store would race to create its tables (and its runs).
    loggers = _instantiate_group(cfg.get("logger")) if is_rank_zero() else []
    callbacks.append(Topology(cfg.run_dir))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      **_settled_trainer(cfg, launch))
    mlf = start_training_run(cfg, loggers, model, continued=bool(continued))
    if mlf is not None and is_rank_zero() and not deferred:
        log_bad_files(mlf, bad_files)
    # The checkpoint that keeps the best model (callbacks.model_checkpoint), not step_checkpoint's last.ckpt.
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    checkpoint = next((c for c in checkpoints if c.save_top_k), checkpoints[0] if checkpoints else None)

    metrics: dict[str, float] = {}
    if fitting:
        trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_path(cfg, checkpoint), weights_only=True)
        if mlf is not None and is_rank_zero() and deferred:
            log_bad_files(mlf, datamodule.bad_files)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    best = (checkpoint.best_model_path if checkpoint is not None else "") if fitting else evaluated
    if fitting and best and checkpoint.best_model_score is not None:  # (ddp_spawn brings back the path only)
        metrics["best_val_loss"] = float(checkpoint.best_model_score)

    embeddings_dir = None
    writer = next((c for c in callbacks if isinstance(c, EmbeddingWriter)), None)
    if family.exports == EMBEDDINGS and cfg.get("export", True):
        if writer is None:
            log.info("no export: callbacks.embedding_writer is not configured")
        else:
            embeddings_dir = _export(cfg, trainer, model, datamodule, writer, best, evaluated, mlf)

    zero = is_rank_zero()
    train_run_id = mlf.run_id if mlf is not None and zero else None
    if cfg.get("evaluate", True) and family.evaluator:
        # A location model scores triplets itself (best checkpoint, or every sigma-stage snapshot), on
        # every rank: each scores its share of the queries, rank 0 logs.
        metrics.update(evaluate_after_fit(cfg, model, datamodule, callbacks, train_run_id, checkpoint=evaluated,
                                          device=trainer.strategy.root_device, log_runs=train_run_id is not None))
    if not zero:
        return metrics
    if cfg.get("evaluate", True) and embeddings_dir:
        metrics.update(_evaluate_export(cfg, model, datamodule, embeddings_dir, train_run_id))
    if mlf is not None:
        record_training(mlf, model, datamodule, best, embeddings_dir)
        mlf.finalize("success")
    _write_metrics(Path(cfg.run_dir), metrics)
    return metrics


def _export(cfg: DictConfig, trainer: pl.Trainer, model, datamodule, writer: EmbeddingWriter, best: Optional[str],
            evaluated: Optional[str], mlf: Optional[MLFlowLogger]) -> str:
    """Export the image and tag embeddings with the best (or evaluated) checkpoint, on every rank;
    the export's folder."""
    if evaluated:
        writer.output_dir = evaluation_export_dir(cfg.run_dir, evaluated)
    writer.extra = {"checkpoint": str(Path(best).resolve()) if best else None, "task_name": cfg.task_name}
    if mlf is not None and is_rank_zero():      # the runs that read the export link back
        writer.extra["mlflow_run"] = {"run_id": mlf.run_id, "experiment_id": mlf.experiment_id,
                                      "run_name": cfg.task_name}
    trainer.predict(model, datamodule=datamodule, ckpt_path=best or None, return_predictions=False,
                    weights_only=True)
    return str(writer.output_dir.resolve())


def _evaluate_export(cfg: DictConfig, model, datamodule, embeddings_dir: str,
                     train_run_id: Optional[str]) -> dict[str, float]:
    """Evaluate an image model's export (rank 0) and, with an MLflow training run, log it."""
    results = evaluate_embeddings(embeddings_dir, shards_dir=datamodule.shards_dir, **cfg.evaluation)
    for k, v in results.items():
        log.info("%s = %.3f", k, v)
    if train_run_id is not None:
        eval_run_id = log_evaluation(
            results, {"evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True),
                      "embeddings_dir": embeddings_dir, "model": cfg.model._target_, "task_name": cfg.task_name},
            tracking_uri=cfg.paths.mlflow_tracking_uri, artifact_root=cfg.paths.get("mlflow_artifact_root"),
            run_name=cfg.task_name, tags={"train_run_id": train_run_id, **embeddings_tags(embeddings_dir),
                                          **model_tags(model.family, model.tasks, model.variant)})
        mlflow.MlflowClient().set_tag(train_run_id, "eval_run_id", eval_run_id)
    return results


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
