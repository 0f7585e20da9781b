"""Tagging accuracy on a fixed subset of the validation split after each validation epoch, for the
models that score a split themselves (LocSens, the factorised model).

Their validation loss is a margin (or softmax) loss on sampled negatives: it says little about
how the model ranks an image's tags among the whole vocabulary, which is what the tagging tables
measure. This callback logs ``val/A_at_1`` and ``val/A_at_10`` (the names MCC logs too) with the
model's own scorer (``training.evaluate.after_fit.EVALUATORS``), so that the learning curves of
MCC and LocSens compare in MLflow's chart view. Rank 0 scores alone; ``images: 0`` turns it off.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl

from common.metrics import accuracy_metric_name, mlflow_metric_name
from training.evaluate.after_fit import EVALUATORS
from training.ranks import Ranks, is_rank_zero


class ValidationTagging(pl.Callback):
    def __init__(self, images: int = 512, ks: tuple[int, ...] = (1, 10), every_n_epochs: int = 1):
        self.images, self.ks, self.every = int(images), tuple(int(k) for k in ks), max(1, int(every_n_epochs))
        self._split: Optional[dict] = None

    def _subset(self, datamodule) -> dict:
        """The first ``images`` rows of the validation split, read once."""
        if self._split is None:
            split = datamodule.split_arrays("val")
            rows = np.arange(min(self.images, len(split["truth"])))
            self._split = {"embedding": np.asarray(split["embedding"])[rows], "latitude": split["latitude"][rows],
                           "longitude": split["longitude"][rows], "truth": split["truth"].take(rows)}
        return self._split

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1                # every n-th epoch, and the last
        if (not self.images or trainer.sanity_checking or not pl_module.family.evaluator or not is_rank_zero()
                or (epoch % self.every and epoch != trainer.max_epochs)):
            return
        dm = trainer.datamodule
        metrics = EVALUATORS[pl_module.family.evaluator](
            pl_module.net, self._subset(dm), dm.tag_embeddings(), zero_location=pl_module.variant == "zeroed",
            ks=list(self.ks), max_queries=0, tagging=True, device=pl_module.device, ranks=Ranks())
        for k in self.ks:
            name = accuracy_metric_name(k)
            if name in metrics:
                pl_module.log(f"val/{mlflow_metric_name(name).split('/', 1)[1]}", metrics[name], rank_zero_only=True)
