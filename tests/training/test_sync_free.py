"""LocSens's training step without device-to-host waits. On a GPU every read of a tensor's value by
Python (``bool``, ``item``, ``tolist``, ``torch.unique``'s data-dependent size, a CPU generator's
draw copied over) makes the host wait for the device's queue to drain. A CPU stand-in for
``torch.cuda.set_sync_debug_mode``: every such read is counted while a step runs the GPU's way
(``sync_free``), for each location variant and task; there are none. The counter is shown to count
by the CPU's way, which uses torch.unique; both ways give the same loss."""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch

from training.models.locsens import LocSens, draw_generator

#: Python-level reads of tensor values (each one a sync on a GPU).
READS = [(torch.Tensor, name) for name in ("__bool__", "item", "tolist", "numpy", "__int__", "__float__", "nonzero",
                                           "unique", "cpu")] + [(torch, "unique"), (torch, "nonzero"),
                                                                 (torch, "masked_select")]


@contextlib.contextmanager
def count_host_reads():
    counts = {"n": 0}
    saved = [(owner, name, getattr(owner, name)) for owner, name in READS]

    def counting(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            counts["n"] += 1
            return fn(*a, **k)
        return wrapper

    for owner, name, fn in saved:
        setattr(owner, name, counting(fn))
    try:
        yield counts
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _model_and_batch(location: str, mode: str):
    torch.manual_seed(0)
    model = LocSens(num_tags=50, optimizer=functools.partial(torch.optim.SGD, lr=0.1), location=location,
                    negatives_mode=mode, input_dim=16, modality_dim=16, hidden=[32, 32], groups=8)
    model.set_tag_embeddings(torch.randn(50, 16))
    model.sigma, model.fusion = 0.1, 0.5
    rng = np.random.default_rng(0)
    tags = torch.full((40, 5), -1, dtype=torch.int64)
    for i in range(40):
        c = int(rng.integers(1, 5))
        tags[i, :c] = torch.as_tensor(rng.choice(50, c, replace=False))
    batch = {"embedding": torch.randn(20, 16), "tag_ids": tags[:20], "latitude": torch.rand(20) * 180 - 90,
             "longitude": torch.rand(20) * 360 - 180, "pool_embedding": torch.randn(20, 16), "pool_tag_ids": tags[20:]}
    return model, batch


@pytest.mark.parametrize("location", ["sampling", "dropout", "raw", "zeroed"])
@pytest.mark.parametrize("mode", ["tagging", "retrieval"])
def test_a_locsens_training_step_reads_nothing_back_from_the_device(location, mode):
    model, batch = _model_and_batch(location, mode)
    model.sync_free = True
    with count_host_reads() as reads:
        loss = model.triplet_loss(batch, train=True, generator=draw_generator(3, 0, 1))
        loss.backward()
    assert reads["n"] == 0
    assert loss.dtype == torch.float32

    cpu_way, _ = _model_and_batch(location, mode)
    cpu_way.sync_free = False
    with count_host_reads() as reads:
        same = cpu_way.triplet_loss(batch, train=True, generator=draw_generator(3, 0, 1))
    assert reads["n"] >= 2                     # torch.unique, twice: the counter counts
    assert torch.allclose(loss, same, rtol=1e-5, atol=1e-6)


def test_the_score_is_float32_under_bf16_autocast():
    model, batch = _model_and_batch("raw", "tagging")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score = model.net.head(torch.randn(4, 3, 32))
    assert score.dtype == torch.float32 and score.shape == (4, 3)
