"""A DataLoader worker's batch blocks in shared memory, used again once the training process has
let go of them.

A worker's batch is one block of shared memory (:func:`training.data.images.batch_tensors`). A new
block for every batch costs the worker a page fault per 4 KiB written: the kernel zeroes and maps
each page on first touch, about an eighth of a decode's time per 224 px image (docs/gpu.md). So a
worker keeps its blocks and writes the next batch into one the training process no longer holds.

It knows which through a board: a small shared array of one number per block, made by the worker.
Taking a block, the worker writes a new number (a generation) in its slot, and the batch carries
(board, slot, generation) across the pipe (:class:`SharedBatch`). Where the batch is unpickled, in
the training process, :func:`_received` watches the block's storage: when the last tensor viewing
it is gone (the storage itself is freed, however many copies of the dict or views of its tensors
were made), its slot is cleared, if it still holds that generation. Only then does the worker
write into the block again. A batch the training process never receives (it stopped early) keeps
its block out of use; past :data:`POOL_BLOCKS` blocks a worker makes unpooled ones, as before.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Optional

import torch

#: Blocks a worker keeps: more than the batches in flight (prefetch_factor, the one pinned and the
#: one trained on) so that a worker seldom waits on none.
POOL_BLOCKS = 8

#: (board, slot, generation): which block a batch is written in, for the training process to free.
Release = tuple[torch.Tensor, int, int]


class SharedBatch(dict):
    """A worker's batch (a dict of tensors, all views of one shared block) that frees its block for
    the worker when the training process lets go of it. Everywhere else a plain dict: copies
    (``copy.copy`` by the DataLoader's conversion and pinning, ``dict(batch)``, Lightning's
    collection functions) are dicts or SharedBatches without the duty."""

    release: Optional[Release] = None

    def __copy__(self) -> "SharedBatch":
        clone = SharedBatch(self)
        clone.release = self.release
        return clone

    def __reduce__(self) -> tuple[Any, tuple[dict, Optional[Release]]]:
        return _received, (dict(self), self.release)


def _free(board: torch.Tensor, slot: int, generation: int) -> None:
    """Clears the slot if it still holds this use of the block (never a later one)."""
    if int(board[slot]) == generation:
        board[slot] = 0


def _received(items: dict, release: Optional[Release]) -> SharedBatch:
    """A SharedBatch unpickled: in the training process, its block's slot is cleared when every
    storage of its tensors has been freed (one, the block; counted in case of more)."""
    batch = SharedBatch(items)
    if release is None:
        return batch
    storages = {id(s): s for s in (t.untyped_storage() for t in items.values() if isinstance(t, torch.Tensor))
                if s.is_shared()}
    if not storages:
        return batch
    left = [len(storages)]

    def gone() -> None:
        left[0] -= 1
        if left[0] == 0:
            _free(*release)

    for storage in storages.values():
        weakref.finalize(storage, gone)
    return batch


class BlockPool:
    """One worker's blocks and their board."""

    def __init__(self, blocks: int):
        self.board = torch.zeros(blocks, dtype=torch.int64).share_memory_()
        self.pid = os.getpid()
        self.blocks: list[torch.UntypedStorage] = []
        self.generation = 0
        self.made = 0                                          # blocks made, pooled or not

    def take(self, nbytes: int) -> tuple[torch.UntypedStorage, Optional[Release]]:
        """A block of at least ``nbytes``, and what frees it: a free pooled one, else a new one
        (pooled while there is room, or in the place of a free one too small)."""
        board = self.board.numpy()
        free = [i for i in range(len(self.blocks)) if board[i] == 0]
        slot = next((i for i in free if self.blocks[i].nbytes() >= nbytes), None)
        if slot is None:
            if len(self.blocks) < board.size:
                slot = len(self.blocks)
                self.blocks.append(self._new(nbytes))
            elif free:
                slot = free[0]
                self.blocks[slot] = self._new(nbytes)
            else:
                return self._new(nbytes), None
        self.generation += 1
        board[slot] = self.generation
        return self.blocks[slot], (self.board, slot, self.generation)

    def _new(self, nbytes: int) -> torch.UntypedStorage:
        self.made += 1
        return torch.UntypedStorage._new_shared(max(1, nbytes))


_POOL: Optional[BlockPool] = None


def worker_pool() -> BlockPool:
    """This worker process's pool (made on first use, in the worker: never one inherited by a fork)."""
    global _POOL
    if _POOL is None or _POOL.pid != os.getpid():
        _POOL = BlockPool(POOL_BLOCKS)
    return _POOL
