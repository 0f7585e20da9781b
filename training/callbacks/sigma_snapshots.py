"""The callback that drives LocSens's location schedules and snapshots the sigma stages.

Every training step it sets the model's ``sigma`` (location sampling) or ``fusion`` weight
(progressive fusion) from the schedules in the model's config, logs it (``locsens/sigma``,
``locsens/fusion``), and, for location sampling, saves a checkpoint at the end of each sigma
stage (``sigma_1.ckpt``, ``sigma_0.1.ckpt``, ...) so the model can be evaluated at each sigma as
in the paper's tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytorch_lightning as pl

from training.models.schedules import snapshot_name


class LocationSchedule(pl.Callback):
    def __init__(self, dirpath: Optional[str] = None, snapshots: bool = True):
        self.dirpath = Path(dirpath) if dirpath else None
        self.snapshots = snapshots
        self.saved: dict[str, str] = {}     # snapshot name -> checkpoint path

    def _total(self, trainer) -> int:
        return max(1, trainer.lightning_module.total_steps())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step, total = trainer.global_step, self._total(trainer)
        if pl_module.location == "sampling":
            pl_module.sigma = pl_module.sigma_schedule.value(step, total)
            pl_module.log("locsens/sigma", pl_module.sigma, rank_zero_only=True)
        elif pl_module.location == "dropout":
            pl_module.fusion = pl_module.fusion_schedule.value(step, total)
            pl_module.log("locsens/fusion", pl_module.fusion, rank_zero_only=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.snapshots or pl_module.location != "sampling" or self.dirpath is None:
            return
        schedule, total = pl_module.sigma_schedule, self._total(trainer)
        for (value, _), end in zip(schedule.stages, schedule.boundaries(total)):
            name = snapshot_name(value)
            if trainer.global_step == end and name not in self.saved:
                path = self.dirpath / f"{name}.ckpt"
                trainer.save_checkpoint(path)      # every rank calls; rank 0 writes
                self.saved[name] = str(path)

    def state_dict(self):
        return {"saved": dict(self.saved)}

    def load_state_dict(self, state_dict):
        self.saved = dict(state_dict.get("saved", {}))
