"""Lightning callbacks the training tests add to a run by ``_target_`` (``helpers.callbacks.<name>``):
importable in every process of a run, ``ddp_spawn``'s included, since they write what they saw to
files (spawned processes share files, not memory)."""
from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


class RecordIds(pl.Callback):
    """Writes each rank's training photo ids per epoch (spawned processes share files, not memory)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.ids: list[int] = []
        self.batches = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.ids, self.batches = [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ids += batch["photo_id"].tolist()
        self.batches += 1

    def on_train_epoch_end(self, trainer, pl_module):
        path = Path(self.out_dir) / f"ids-e{trainer.current_epoch}-r{trainer.global_rank}.json"
        path.write_text(json.dumps({"ids": self.ids, "batches": self.batches}))


class CountEpochs(pl.Callback):
    def __init__(self, out: str):
        self.out = out

    def on_train_epoch_start(self, trainer, pl_module):
        with open(self.out, "a") as fh:
            fh.write(f"{trainer.current_epoch}\n")


class RecordDraws(pl.Callback):
    """Each rank's batch size and the seed of its training draws (spawned processes share files)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            path = Path(self.out_dir) / f"draws-r{trainer.global_rank}.json"
            path.write_text(json.dumps({"batch": int(batch["embedding"].shape[0]),
                                        "seed": int(pl_module._train_generator.initial_seed())}))
