"""Learning-rate schedules, built per step from the trainer's estimated number of steps."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0,
                  warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up (``warmup_steps`` or ``warmup_fraction`` of the run), then cosine decay to
    ``min_lr_ratio`` times the base learning rate at ``total_steps``."""
    total = max(1, int(total_steps))
    warm = max(int(warmup_steps), int(warmup_fraction * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step_decay(optimizer: Optimizer, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75),
               gamma: float = 0.1) -> LambdaLR:
    """Multiply the learning rate by ``gamma`` at each milestone (fractions of the run)."""
    total = max(1, int(total_steps))
    steps = sorted(int(m * total) for m in milestones)
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= s for s in steps))
