"""The training-batch failpoint of common/failpoints.py, as a callback: training.run adds it only
while ``LOCSENS_FAILPOINT`` is set (fault tests), so ordinary runs do not carry it."""
from __future__ import annotations

import pytorch_lightning as pl

from common import failpoints


class TrainBatchFailpoint(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        failpoints.reach("train_batch", f"{trainer.global_rank}.{trainer.current_epoch}.{batch_idx}")
