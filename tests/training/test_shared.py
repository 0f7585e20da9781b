"""A worker's batch blocks are written again only once the training process has let go of them:
reused when batches are dropped, never while a batch or any view of it is held."""
from __future__ import annotations

import copy
import gc
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pyarrow as pa
import torch
import torch.multiprocessing  # noqa: F401  (its reductions: tensors pickled as shared memory)
from helpers.images import jpeg
from torch.utils.data import DataLoader, IterableDataset

from training.callbacks.export import held_copy
from training.data import images as I
from training.data import shared as S


def _table(n: int, seed: int) -> pa.Table:
    return pa.table({"photo_id": pa.array(range(seed * 100, seed * 100 + n), pa.int64()),
                     "image": pa.array([jpeg(40, 36, seed=seed * 7 + i) for i in range(n)]),
                     "tag_ids": pa.array([[i % 3, 7] for i in range(n)], pa.list_(pa.int32())),
                     "latitude": pa.array(np.linspace(-10, 10, n)),
                     "longitude": pa.array(np.linspace(5, 6, n))})


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """Batch ``seed``: its own JPEGs, rows and draws (the same in a worker and here)."""
    return I.to_batch(_table(3 + seed % 3, seed), resize=None, crop=32, train=True, seed=1, epoch=0,
                      gen=torch.Generator().manual_seed(seed))


class _Batches(IterableDataset):
    """``n`` batches made in a worker, then how many blocks the worker made for them."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        for seed in range(self.n):
            yield _batch(seed)
        yield {"made": torch.tensor(S.worker_pool().made)}


def _same(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_blocks_let_go_of_are_written_again():
    n = 40
    seen = []
    for batch in DataLoader(_Batches(n), batch_size=None, num_workers=1):
        if "made" in batch:
            made = int(batch["made"])
        else:
            assert isinstance(batch, S.SharedBatch) and batch["image"].is_shared()
            seen.append(_same(batch, _batch(len(seen))))
        del batch
    assert seen == [True] * n
    assert made <= S.POOL_BLOCKS < n                 # a few blocks, written again and again


def test_a_batch_held_whole_or_by_one_view_is_never_written_over():
    """Every third batch kept whole, every third by a view of one image (the dict dropped), the rest
    dropped: the kept ones still hold their pixels after the worker has gone on for many batches."""
    n = 45
    kept: dict[int, object] = {}
    for i, batch in enumerate(DataLoader(_Batches(n), batch_size=None, num_workers=1)):
        if "made" in batch:
            made = int(batch["made"])
        elif i % 3 == 0:
            kept[i] = batch
        elif i % 3 == 1:
            kept[i] = batch["image"][1:2]
        del batch
    assert made > S.POOL_BLOCKS                        # held blocks made the worker make others
    for i, held in kept.items():
        want = _batch(i)
        assert _same(held, want) if i % 3 == 0 else torch.equal(held, want["image"][1:2]), i


def test_a_block_is_freed_once_every_view_is_gone_and_only_for_its_own_use():
    pool = S.BlockPool(2)
    block, release = pool.take(64)
    board, slot, generation = release
    batch = S.SharedBatch({"a": torch.empty(0, dtype=torch.uint8).set_(block, 0, (64,))})
    batch.release = release
    assert copy.copy(batch).release == release and type(dict(batch)) is dict
    received = pickle.loads(ForkingPickler.dumps(batch))             # as the training process gets it
    assert isinstance(received, S.SharedBatch) and torch.equal(received["a"], batch["a"])
    view = received["a"][:8]
    del received, batch, block
    gc.collect()
    assert int(board[slot]) == generation                            # a view is left, here and in the pool
    pool.blocks.clear()
    del view
    gc.collect()
    assert int(board[slot]) == 0

    pool = S.BlockPool(2)
    first, (board, slot, generation) = pool.take(100)
    S._free(board, slot, generation)
    again, (_, slot2, newer) = pool.take(50)                         # free and large enough: the same block
    assert again is first and slot2 == slot and newer > generation
    S._free(board, slot, generation)                                 # a late free of the earlier use: ignored
    assert int(board[slot]) == newer
    other, _ = pool.take(100)
    assert other is not first                                        # in use: another block
    S._free(board, slot, newer)
    bigger, _ = pool.take(1000)                                      # the free block is too small: replaced
    assert bigger is not first and bigger.nbytes() >= 1000 and len(pool.blocks) == 2
    unpooled, release = pool.take(10)                                # none free, no room: a block of its own
    assert release is None and all(unpooled is not b for b in pool.blocks)


def test_predictions_buffered_for_export_hold_no_batch_block():
    """predict_step returns views of the batch; the exporter buffers copies, not the blocks."""
    block = torch.UntypedStorage._new_shared(1 << 20)
    photo_id = torch.empty(0, dtype=torch.int64).set_(block, 8, (4,))
    photo_id.copy_(torch.arange(4))
    kept = held_copy({"photo_id": photo_id, "embedding": torch.ones(4, 3)})
    assert torch.equal(kept["photo_id"], torch.arange(4))
    assert kept["photo_id"].untyped_storage().nbytes() == 32 and not kept["photo_id"].is_shared()
