"""Small callbacks the configs compose."""
from __future__ import annotations

import time

import pytorch_lightning as pl


class Throughput(pl.Callback):
    """Logs training images per second over each epoch (summed over ranks, validation excluded)."""

    def __init__(self):
        self._images, self._start, self._busy = 0, 0.0, 0.0
        self.history: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._images, self._busy, self._start = 0, 0.0, time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        if trainer.training:
            self._busy += time.perf_counter() - self._start

    def on_validation_end(self, trainer, pl_module):
        if trainer.training:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += int(batch["image"].shape[0])

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = self._busy + (time.perf_counter() - self._start)
        rate = self._images / max(seconds, 1e-9)
        self.history.append(rate)
        # Summed over ranks: the whole job's throughput.
        pl_module.log("train/images_per_s", rate, sync_dist=True, reduce_fx="sum")
