"""Schedules over training steps: the sigma schedule of LocSens's location sampling (docs/method.md),
the fusion schedule of its progressive-fusion variant, and the learning-rate schedules, which
follow the sigma schedule's stages so that each snapshot is a settled model.

Training with location sampling starts at sigma = 1 (locations nearly random: the model learns
image-tag relevance first) and lowers sigma to 0 (true locations). The paper reports the model at
sigma = 1, 0.1, 0.05, 0.01 and 0, so the schedule is a list of stages ``(value, fraction of
training)``: the value is held (or, with ``interpolate``, ramped linearly from the previous
stage's value) over its share of the steps, and a snapshot is taken at the end of each stage.
The authors' release ran this upwards; we follow the paper.

Location sampling itself (the noise sigma sets) is :func:`training.models.locations.sample_locations`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

#: The paper's schedule: (sigma, share of training) stages from 1 down to 0, half of training at 1
#: (conf/model/locsens.yaml sets it for runs; this is the model's default).
PAPER_SIGMA_SCHEDULE: tuple[tuple[float, float], ...] = ((1.0, 0.5), (0.1, 0.125), (0.05, 0.125), (0.01, 0.125),
                                                         (0.0, 0.125))


def snapshot_name(sigma: float) -> str:
    """The name of the model saved at the end of a sigma stage: its checkpoint file's stem, and the
    suffix of its evaluation run (``<task>_sigma_0.1``). The only place sigma becomes a name."""
    return f"sigma_{sigma:g}"


@dataclass(frozen=True)
class StageSchedule:
    """A piecewise schedule over training steps: ``stages`` are (value, fraction) pairs."""

    stages: tuple[tuple[float, float], ...]
    interpolate: bool = False

    @classmethod
    def from_config(cls, stages: Sequence[Sequence[float]], interpolate: bool = False) -> "StageSchedule":
        parsed = tuple((float(v), float(f)) for v, f in stages)
        if not parsed:
            raise ValueError("schedule needs at least one (value, fraction) stage")
        if any(f <= 0 for _, f in parsed):
            raise ValueError(f"schedule stage fractions must be positive: {parsed}")
        total = sum(f for _, f in parsed)
        return cls(tuple((v, f / total) for v, f in parsed), interpolate)

    def boundaries(self, total_steps: int) -> list[int]:
        """The step at which each stage ends (the last one ends at ``total_steps``)."""
        ends, acc = [], 0.0
        for _, f in self.stages:
            acc += f
            ends.append(int(round(acc * total_steps)))
        ends[-1] = total_steps
        return ends

    def stage_at(self, step: int, total_steps: int) -> int:
        for i, end in enumerate(self.boundaries(total_steps)):
            if step < end:
                return i
        return len(self.stages) - 1

    def value(self, step: int, total_steps: int) -> float:
        """The schedule's value at ``step`` of ``total_steps``."""
        i = self.stage_at(step, total_steps)
        target = self.stages[i][0]
        if not self.interpolate or i == 0:
            return target
        ends = self.boundaries(total_steps)
        start, end = ends[i - 1], ends[i]
        prev = self.stages[i - 1][0]
        t = (step - start) / max(end - start, 1)
        return prev + (target - prev) * min(max(t, 0.0), 1.0)


# --- learning-rate schedules, built per step from the trainer's estimated number of steps -------------

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
