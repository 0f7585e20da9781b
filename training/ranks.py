"""Which process this is among a run's ranks, spelled once: :func:`is_rank_zero` for side effects
that happen once per run (MLflow runs, files, logs), and :class:`Ranks` for work split over the
processes of a run.

Evaluation is split that way: each rank ranks its share of the queries, rank 0 gathers the
rankings and computes the metrics.

The split is by query (images to tag, retrieval queries): every rank holds the whole gallery and
vocabulary (500k x 300 floats is 600 MB), so no scores cross processes, only each query's top-k
indices. Shares are contiguous blocks in query order, and the gathered rankings are laid end to
end in rank order, so that the result is the same array one process would have made; the
metrics that follow are then identical whatever the number of ranks (tested with 2 processes).

Outside a process group (one GPU, the CPU, ``ddp_spawn`` after ``fit``) this is one rank holding
everything, and nothing is exchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_only


def global_rank() -> int:
    """This process's rank in the run: the process group's once it exists, before that the rank its
    launcher gave it (Lightning reads ``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID`` at import and sets
    it again when the trainer starts), 0 for a process on its own.

    Under Lightning's own launcher, the command started on node k > 0 (``NODE_RANK=k``) has no
    rank of its own yet and reads as local rank 0: it is not the run's rank 0, and must not open
    the tracking store or make runs. Before the group exists its value here is then a lower bound
    (k), exact only in whether it is 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    if rank == 0 and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        return int(os.environ.get("NODE_RANK", "0") or 0)
    return rank


def is_rank_zero() -> bool:
    """Whether this process does a run's once-only work (MLflow runs, files written once, logs)."""
    return global_rank() == 0


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ``world`` processes that evaluate together."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        """The running process group (Lightning's DDP keeps it after ``fit``), or one rank."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` queries (sizes differ by at most one)."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def gather(self, part: np.ndarray) -> Optional[np.ndarray]:
        """Every rank's ``part`` concatenated in rank order, on rank 0 (None elsewhere). A
        collective: every rank must call it, in the same order."""
        if self.world == 1:
            return part
        parts: Optional[list] = [None] * self.world if self.is_zero else None
        dist.gather_object(part, parts, dst=0)
        return np.concatenate(parts) if self.is_zero else None

    def all_gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank. A collective."""
        if self.world == 1:
            return [value]
        out: list = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (e.g. a setting decided once)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
