"""After LocSens is fitted: evaluate the model(s) the paper reports, one MLflow run each (rank 0).

Location sampling is reported at every sigma stage (the snapshots ``sigma_1`` ... ``sigma_0`` the
:class:`~training.callbacks.sigma_snapshots.LocationSchedule` callback saved); the other variants at
their best checkpoint by validation loss. Evaluation runs are named ``<task>`` or
``<task>_sigma_<s>`` so that MLflow's compare view lines them up with MCC and the baselines.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from common import metrics as M
from training.callbacks.sigma_snapshots import LocationSchedule
from training.data.shards import place_mask
from training.evaluate.factorised import evaluate_factorised
from training.evaluate.locsens import evaluate_locsens, scoring_precision
from training.evaluate.rerank import PlacePrior
from training.evaluate.runs import embeddings_tags, log_evaluation, model_tags
from training.models.schedules import snapshot_name
from training.models.streamed import StreamedModule
from training.ranks import Ranks

#: ``Family.evaluator`` -> the function that scores a split with the family's network.
EVALUATORS: dict[str, Callable[..., dict[str, float]]] = {"locsens": evaluate_locsens,
                                                           "factorised": evaluate_factorised}

log = logging.getLogger(__name__)


def models_to_evaluate(cfg: DictConfig, model: StreamedModule, callbacks: list,
                       checkpoint: Optional[str] = None) -> dict[str, tuple[Optional[str], Optional[float]]]:
    """Run name -> (checkpoint path or None for the weights in memory, the snapshot's sigma or None);
    ``checkpoint``: evaluate that one (``train=false``)."""
    if checkpoint:
        return {cfg.task_name: (checkpoint, None)}
    schedule = next((c for c in callbacks if isinstance(c, LocationSchedule)), None)
    sampling = model.variant == "sampling"
    if sampling and cfg.evaluation.get("snapshots", True) and schedule and schedule.saved:
        named = [(snapshot_name(v), v) for v, _ in model.sigma_schedule.stages]
        return {f"{cfg.task_name}_{name}": (schedule.saved[name], v) for name, v in named if name in schedule.saved}
    best = next((c.best_model_path for c in callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path), "")
    return {cfg.task_name: (best or None, None)}


def load_net(model: StreamedModule, checkpoint: Optional[str]) -> torch.nn.Module:
    """A copy of the model's network with a checkpoint's weights."""
    net = copy.deepcopy(model.net)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    return net


def evaluate_after_fit(cfg: DictConfig, model: StreamedModule, datamodule, callbacks: list,
                       train_run_id: Optional[str] = None, checkpoint: Optional[str] = None,
                       device: Optional[torch.device] = None, log_runs: bool = True) -> dict[str, float]:
    """Evaluate on ``cfg.evaluation.split``; returns metrics, prefixed by run name for snapshots.
    ``checkpoint``: evaluate that checkpoint only (``train=false``).

    Call it on every rank of a DDP run (``device``: the rank's own): each rank scores its share of
    the queries (:mod:`training.ranks`) and rank 0 gets the metrics and, with ``log_runs``
    (rank 0 of a run with an MLflow logger), logs the MLflow runs. The split is read once for every
    snapshot."""
    ev = cfg.evaluation
    ranks = Ranks.current()
    split = datamodule.split_arrays(ev.split)
    shards_dir = getattr(datamodule, "shards_dir", None)
    places = place_mask(shards_dir) if shards_dir and Path(shards_dir).exists() else None
    tag_table = datamodule.tag_embeddings()
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    targets = models_to_evaluate(cfg, model, callbacks, checkpoint)
    export = embeddings_tags(datamodule.embeddings_dir, datamodule.manifest)   # one read for every snapshot
    score = EVALUATORS[model.family.evaluator]
    prior = None
    if ev.get("mode", "exact") == "rerank" and (ev.get("rerank") or {}).get("place_tags"):
        train = datamodule.split_arrays("train")       # the places' tags, from the photos trained on
        prior = PlacePrior(train["latitude"], train["longitude"], train["truth"], len(tag_table))
    out: dict[str, float] = {}
    for i, (name, (checkpoint, sigma)) in enumerate(targets.items()):
        checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None   # runs name files unambiguously
        last = i == len(targets) - 1
        log.info("evaluating %s (%s, %s mode, rank %d of %d)", name, checkpoint or "weights in memory",
                 ev.get("mode", "exact"), ranks.rank, ranks.world)
        started = time.perf_counter()
        metrics = score(
            load_net(model, checkpoint).to(device), split, tag_table, place_mask=places,
            zero_location=model.variant == "zeroed", ks=list(ev.ks), min_images=ev.min_images,
            seed=ev.seed, max_queries=ev.get("max_queries"), pairs=int(ev.get("pairs", 1 << 20)), device=device,
            tagging=bool(ev.get("tagging", True)) and (last or bool(ev.get("snapshot_tagging", True))),
            mode=ev.get("mode", "exact"), rerank=ev.get("rerank"), precision=str(ev.get("precision", "auto")),
            ranks=ranks, place_prior=prior)
        if not ranks.is_zero:
            continue
        metrics["eval/seconds"] = time.perf_counter() - started
        metrics["eval/ranks"] = float(ranks.world)
        config: dict[str, Any] = {"evaluation": OmegaConf.to_container(ev, resolve=True), "model": type(model).__name__,
                                  "location": model.variant,
                                  "negatives_mode": model.hparams.get("negatives_mode"), "task_name": cfg.task_name,
                                  "checkpoint": checkpoint, "embeddings_dir": str(datamodule.embeddings_dir),
                                  **({"scoring_precision": scoring_precision(str(ev.get("precision", "auto")), device)}
                                     if score is evaluate_locsens else {}),
                                  **({"sigma": sigma} if sigma is not None else {})}
        if log_runs:
            links = {k: v for k, v in {"train_run_id": train_run_id, "checkpoint": checkpoint}.items() if v}
            log_evaluation(metrics, config, tracking_uri=cfg.paths.mlflow_tracking_uri,
                           artifact_root=cfg.paths.get("mlflow_artifact_root"), run_name=name,
                           tags={**export, **links, **model_tags(model.family, model.tasks, model.variant)})
        out.update({(k if last else f"{name}/{k}"): float(v) for k, v in metrics.items() if np.isfinite(v)})
        for k in (M.accuracy_metric_name(1), M.accuracy_metric_name(10), M.location_metric_name("25km"),
                  M.location_metric_name("agnostic")):
            if k in metrics:
                log.info("%s %s = %.2f", name, k, metrics[k])
    return out
