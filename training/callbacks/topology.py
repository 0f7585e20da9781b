"""The run's processes, checked and recorded once they have found each other.

Every rank reads the run folder (best.ckpt, the sigma snapshots, the other ranks' export files),
so on several nodes it must be on a filesystem they share. A node with its own local folder would
train, then fail or hang at the first file another rank wrote: this callback finds that out at
the start, with one line naming the folder. It also records how the global batch is split, and
the learning rate that goes with it.
"""
from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl

from training.errors import SetupError
from training.ranks import Ranks

log = logging.getLogger(__name__)

#: Where rank 0 writes the token the other ranks look for (removed again at once).
PROBE_DIR = ".shared-check"


def check_shared_folder(run_dir: Path, ranks: Ranks) -> None:
    """Stop every rank, with the same message, unless each one sees a file rank 0 has just written
    in ``run_dir``. A collective: every rank calls it."""
    if ranks.world == 1:
        return
    token = ranks.broadcast(secrets.token_hex(8) if ranks.is_zero else None)
    probe = run_dir / PROBE_DIR / token
    if ranks.is_zero:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(socket.gethostname())
    ranks.barrier()
    seen = ranks.all_gather((probe.exists(), socket.gethostname(), str(run_dir)))
    ranks.barrier()
    if ranks.is_zero:
        probe.unlink(missing_ok=True)
    blind = [f"rank {r} on {host} (its run_dir {path})" for r, (ok, host, path) in enumerate(seen) if not ok]
    if blind:
        raise SetupError(f"run_dir={seen[0][2]} (rank 0 on {seen[0][1]}): {', '.join(blind)} cannot see the files "
                         "rank 0 writes there; every rank reads checkpoints and exports from the run folder, so it "
                         "must be one folder on a filesystem all nodes share (set paths.output_dir or run_dir to a "
                         "shared path)")


class Topology(pl.Callback):
    """At setup (the process group exists): checks the shared run folder, then logs and records
    the launch (nodes, processes, global and per-rank batch, learning rate)."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)
        self.record: dict[str, object] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_shared_folder(self.run_dir, Ranks.current())
        dm = trainer.datamodule
        world = trainer.world_size
        record: dict[str, object] = {"world_size": world, "num_nodes": trainer.num_nodes,
                                     "devices_per_node": trainer.num_devices}
        split = getattr(dm, "per_rank_batch", None)
        if stage == "fit" and split is not None:
            record["global_batch"] = int(dm.hparams.batch_size)
            record["per_rank_batch"] = split(world)
            lr = _learning_rate(pl_module)
            if lr is not None:
                record["lr"] = lr
                log.info("global batch %d = %d per rank x %d ranks (%d node(s)); lr %g is for this global batch: "
                         "for another, scale it in proportion (docs/gpu.md)", record["global_batch"],
                         record["per_rank_batch"], world, trainer.num_nodes, lr)
        self.record = record
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams({f"topology/{k}": v for k, v in record.items()})


def _learning_rate(module: pl.LightningModule) -> Optional[float]:
    factory = getattr(module, "optimizer_factory", None)
    lr = getattr(factory, "keywords", {}).get("lr") if factory is not None else None
    return float(lr) if lr is not None else None
