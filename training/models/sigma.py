"""The sigma schedule of LocSens's location sampling (docs/method.md), and the fusion schedule of its
progressive-fusion variant.

Training with location sampling starts at sigma = 1 (locations nearly random: the model learns
image-tag relevance first) and lowers sigma to 0 (true locations). The paper reports the model at
sigma = 1, 0.1, 0.05, 0.01 and 0, so the schedule is a list of stages ``(value, fraction of
training)``: the value is held (or, with ``interpolate``, ramped linearly from the previous
stage's value) over its share of the steps, and a snapshot is taken at the end of each stage.
The authors' release ran this upwards; we follow the paper.

Location sampling itself: each triplet's normalised location ``((lat+90)/180, (lon+180)/360)``
gets Gaussian noise of standard deviation sigma and is wrapped back into [0, 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

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


def normalise_location(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """(B, 2) location input ``((lat+90)/180, (lon+180)/360)`` in [0, 1]."""
    return torch.stack([(lat + 90.0) / 180.0, (lon + 180.0) / 360.0], dim=-1)


def sample_locations(loc: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each location drawn from N(loc, sigma^2 I) and wrapped into [0, 1) (docs/method.md)."""
    if sigma <= 0:
        return loc
    noise = torch.randn(loc.shape, generator=generator, device=loc.device if generator is None else "cpu",
                        dtype=loc.dtype).to(loc.device)
    return torch.remainder(loc + sigma * noise, 1.0)
