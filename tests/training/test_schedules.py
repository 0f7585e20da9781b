"""Learning-rate schedules: the single cosine and the per-stage one of the sigma schedule."""
from __future__ import annotations

import pytest
import torch

from training.models.schedules import staged_cosine, warmup_cosine

SIGMA_STAGES = [[1.0, 0.5], [0.1, 0.125], [0.05, 0.125], [0.01, 0.125], [0.0, 0.125]]


def _rates(make, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make(optimizer)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        scheduler.step()
    return out


def test_one_stage_is_the_single_cosine():
    one = _rates(lambda o: staged_cosine(o, 200, None, warmup_fraction=0.05, min_lr_ratio=0.05), 200)
    single = _rates(lambda o: warmup_cosine(o, 200, warmup_fraction=0.05, min_lr_ratio=0.05), 200)
    assert one == pytest.approx(single)


def test_every_sigma_stage_anneals_before_its_snapshot():
    """Warm-up, then a decay to the floor by the end of each stage (where the snapshot is taken);
    later stages restart at restart_ratio of the base rate."""
    total = 800
    lr = _rates(lambda o: staged_cosine(o, total, SIGMA_STAGES, warmup_fraction=0.05, min_lr_ratio=0.05,
                                        restart_ratio=0.2), total)
    ends = [400, 500, 600, 700, 800]
    assert lr[0] == pytest.approx(1 / 20) and lr[19] == pytest.approx(1.0)     # 20 warm-up steps
    assert max(lr) == pytest.approx(1.0)
    for start, end in zip([0] + ends[:-1], ends):
        assert lr[end - 1] == pytest.approx(0.05, abs=0.002)                    # settled at the stage end
        if start:
            assert lr[start] == pytest.approx(0.2)                              # restart
            stage = lr[start:end]
            assert all(a >= b for a, b in zip(stage, stage[1:]))                # then only down


def test_stage_shares_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        _rates(lambda o: staged_cosine(o, 10, [[1.0, 0.5], [0.0, 0.0]]), 1)
