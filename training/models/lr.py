"""Learning-rate schedules, built per step from the trainer's estimated number of steps."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from training.models.sigma import StageSchedule


def _cosine(progress: float, peak: float, floor: float) -> float:
    """Cosine decay from ``peak`` (progress 0) to ``floor`` (progress 1)."""
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0,
                  warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up (``warmup_steps`` or ``warmup_fraction`` of the run), then cosine decay to
    ``min_lr_ratio`` times the base learning rate at ``total_steps``."""
    total = max(1, int(total_steps))
    warm = max(int(warmup_steps), int(warmup_fraction * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return _cosine((step - warm) / max(1, total - warm), 1.0, min_lr_ratio)

    return LambdaLR(optimizer, factor)


def step_decay(optimizer: Optimizer, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75),
               gamma: float = 0.1) -> LambdaLR:
    """Multiply the learning rate by ``gamma`` at each milestone (fractions of the run)."""
    total = max(1, int(total_steps))
    steps = sorted(int(m * total) for m in milestones)
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= s for s in steps))


def staged_cosine(optimizer: Optimizer, total_steps: int, stages: Optional[Sequence[Sequence[float]]] = None,
                  warmup_fraction: float = 0.0, min_lr_ratio: float = 0.0, restart_ratio: float = 0.2) -> LambdaLR:
    """One cosine decay per stage of a staged schedule (``stages``: (value, share) pairs, as the
    sigma schedule), so that the model has settled at the end of every stage, where it is
    snapshotted. The first stage starts at the base rate, after a linear warm-up over
    ``warmup_fraction`` of that stage; each later stage restarts at ``restart_ratio`` times the base
    rate. Every stage decays to ``min_lr_ratio`` times the base rate. ``stages=None``: one stage,
    the same as :func:`warmup_cosine`."""
    total = max(1, int(total_steps))
    # The sigma schedule's own boundaries, so that each decay ends exactly where a snapshot is taken.
    ends = StageSchedule.from_config(stages or [(0.0, 1.0)]).boundaries(total)
    warm = int(warmup_fraction * ends[0])

    def factor(step: int) -> float:
        i = next((k for k, e in enumerate(ends) if step < e), len(ends) - 1)
        if i == 0 and step < warm:
            return (step + 1) / warm
        begin = warm if i == 0 else ends[i - 1]
        return _cosine((step - begin) / max(1, ends[i] - begin), 1.0 if i == 0 else restart_ratio, min_lr_ratio)

    return LambdaLR(optimizer, factor)
