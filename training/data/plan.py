"""The epoch plan: which rows each rank and DataLoader worker reads, in which batches.

The unit of work is one row group of one Parquet file (shards or embeddings). Each epoch:

1. the work units are shuffled with ``seed + epoch`` (the same permutation on every rank);
2. their rows, laid end to end, are cut into ``world_size`` contiguous ranges of equal size (+-1);
3. every rank cuts its range into the same number of batches (:func:`batches_per_rank`) of
   near-equal size, so no rank waits for another at the end of an epoch, and every row is read
   exactly once;
4. a rank's batches are dealt to its DataLoader workers in contiguous blocks, so a worker reads
   few row groups and each one at most a couple of times;
5. each worker reads a window of batches at a time and deals its rows out again, shuffled
   (:func:`deal_window`), so rows meet new batch-mates every epoch.

A run resumed from a mid-epoch checkpoint goes on at the next batch of the same plan
(:class:`PlannedLoader`): the batches already trained on are skipped without being read, and the
random draws they made are made again, so that what follows is what the uninterrupted run saw.

Per-row draws that must not depend on the topology (MCC's target tag) are hashes of
(photo_id, seed, epoch). Parquet files are opened inside the workers, never in the main process.
"""
from __future__ import annotations

import abc
import math
import multiprocessing as mp
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from training.errors import SetupError

# PlannedStream.__len__ is exact for every rank and worker split (plan_epoch): Lightning's generic
# caution about IterableDataset lengths does not apply, nor its batch-index tracking in predict.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched")


# --- the epoch plan (pure, tested directly) ----------------------------------------------------------

def batches_per_rank(total_rows: int, world_size: int, batch_size: int) -> int:
    """Batches every rank yields in an epoch: enough for the largest rank's share at ``batch_size``."""
    if total_rows <= 0:
        return 0
    return math.ceil(math.ceil(total_rows / world_size) / batch_size)


def batch_sizes(rows: int, num_batches: int, batch_size: int) -> np.ndarray:
    """Split ``rows`` into ``num_batches`` batches of near-equal size (at most ``batch_size``).

    Equal sizes rather than full batches plus a remainder: no rank ends an epoch on a batch of one
    or two rows (which BatchNorm cannot train on), and a rank with a row less than the largest
    still yields as many batches.
    """
    if num_batches == 0:
        return np.zeros(0, dtype=np.int64)
    if rows < num_batches or rows > num_batches * batch_size:
        raise ValueError(f"cannot split {rows} rows into {num_batches} batches of <= {batch_size}: "
                         "use a smaller batch or fewer ranks")
    sizes = np.full(num_batches, rows // num_batches, dtype=np.int64)
    sizes[:rows % num_batches] += 1
    return sizes


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Rows per rank and step: the global ``data.batch_size`` split evenly over the ranks, so that
    the optimisation sees the same batch (and the same learning rate fits it) on 1 GPU or 16."""
    if global_batch % world_size:
        raise SetupError(f"data.batch_size={global_batch} (the global batch) is not divisible by the {world_size} "
                         f"ranks: use a multiple of {world_size}")
    return global_batch // world_size


@dataclass(frozen=True)
class Batch:
    """One planned batch: row ranges ``(unit, start, stop)`` of the work units, in order."""

    index: int                               # position in the rank's epoch
    segments: tuple[tuple[int, int, int], ...]

    @property
    def size(self) -> int:
        return sum(stop - start for _, start, stop in self.segments)


def plan_epoch(unit_rows: Sequence[int], *, batch_size: int, world_size: int = 1, rank: int = 0,
               num_workers: int = 1, worker: int = 0, seed: int = 0, epoch: int = 0,
               shuffle: bool = True) -> list[Batch]:
    """The batches one DataLoader worker of one rank yields in one epoch (see the module doc)."""
    unit_rows = np.asarray(unit_rows, dtype=np.int64)
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers}")
    order = (np.random.default_rng([seed, epoch]).permutation(unit_rows.size) if shuffle
             else np.arange(unit_rows.size))
    ends = np.cumsum(unit_rows[order])
    starts = ends - unit_rows[order]
    total = int(ends[-1]) if ends.size else 0
    nb = batches_per_rank(total, world_size, batch_size)
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    bounds = lo + np.concatenate([[0], np.cumsum(batch_sizes(hi - lo, nb, batch_size))])
    first, last = worker * nb // num_workers, (worker + 1) * nb // num_workers
    out = []
    for j in range(first, last):
        a, b = int(bounds[j]), int(bounds[j + 1])
        u = int(np.searchsorted(ends, a, side="right"))
        segments = []
        while a < b:
            stop = min(b, int(ends[u]))
            segments.append((int(order[u]), a - int(starts[u]), stop - int(starts[u])))
            a, u = stop, u + 1
        out.append(Batch(j, tuple(segments)))
    return out


# --- per-row randomness that does not depend on the topology --------------------------------------------

def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_uniform(photo_ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """A uniform [0, 1) number per photo, fixed by (photo_id, seed, epoch)."""
    salt = _splitmix64(np.array([seed * 1_000_003 + epoch], dtype=np.int64).view(np.uint64))
    h = _splitmix64(np.asarray(photo_ids, dtype=np.int64).view(np.uint64) ^ salt)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def draw_one_tag(photo_ids: np.ndarray, offsets: np.ndarray, values: np.ndarray, seed: int,
                 epoch: int) -> np.ndarray:
    """MCC's target: one of each image's tags, drawn at random (vectorised, seed + epoch)."""
    counts = np.diff(offsets)
    if np.any(counts <= 0):
        raise ValueError("every image needs at least one tag")
    pick = offsets[:-1] + np.minimum((row_uniform(photo_ids, seed, epoch) * counts).astype(np.int64),
                                     counts - 1)
    return values[pick]


# --- the stream ------------------------------------------------------------------------------------------

class SharedEpoch:
    """The epoch number, visible to persistent DataLoader workers (a shared-memory int)."""

    def __init__(self, epoch: int = 0):
        self.value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self.value.value = epoch

    def get(self) -> int:
        return self.value.value


class SharedResume:
    """Where a resumed run goes on: (epoch, batches of it already trained), visible to persistent
    DataLoader workers. It names its epoch, so that it applies to that epoch's iteration only,
    whenever the workers start reading it."""

    def __init__(self):
        self.value = mp.Array("q", [-1, 0])

    def set(self, epoch: int, done: int) -> None:
        self.value[:] = [epoch, done]

    def done(self, epoch: int) -> int:
        """Batches of ``epoch`` to skip (0 unless the run resumes inside that epoch)."""
        at, done = self.value[:]
        return int(done) if at == epoch else 0


def worker_skips(counts: Sequence[int], done: int) -> list[int]:
    """How many of its first batches each DataLoader worker skips so that the loader resumes after
    ``done`` batches. The loader takes one batch from each worker in turn (workers that have run
    out drop from the turn), so the ``done`` first batches it yielded are the first rounds of that
    turn, not the first batches of the plan."""
    counts = np.asarray(counts, dtype=np.int64)
    if done <= 0 or counts.size == 0:
        return [0] * int(counts.size)
    worker = np.repeat(np.arange(counts.size), counts)
    turn = np.concatenate([np.arange(n) for n in counts])
    order = np.lexsort((worker, turn))          # by turn, then worker: the loader's order
    return np.bincount(worker[order[:done]], minlength=counts.size).tolist()


class Skipped:
    """What a worker yields in place of a batch a resumed run has already trained on: it keeps the
    loader's turn among workers as it was, and :class:`PlannedLoader` drops it."""

    __slots__ = ()


def deal_window(sizes: Sequence[int], rng: np.random.Generator, shuffle: bool,
                pool: int = 0) -> list[tuple[np.ndarray, Optional[np.ndarray]]]:
    """Rows of each batch of one window (positions in the window's rows laid end to end), and the
    rows of each batch's sample pool (``pool`` drawn uniformly from the whole window, or None).

    Pure and seeded by ``rng``: the streams deal their windows with it, and the benchmark replays
    the same draws without reading any data.
    """
    total = int(sum(sizes))
    order = rng.permutation(total) if shuffle else np.arange(total)
    out, start = [], 0
    for size in sizes:
        out.append((order[start:start + size], rng.integers(0, total, pool) if pool and total else None))
        start += size
    return out


class PlannedStream(IterableDataset, abc.ABC):
    """A stream of batches over (file, row group) work units, planned per epoch by
    :func:`plan_epoch` for one rank, read a window of batches at a time (subclasses shuffle and
    convert the rows)."""

    def __init__(self, root: str | Path, units: Sequence[tuple[str, int, int]], columns: Sequence[str], *,
                 batch_size: int, shuffle: bool, seed: int, world_size: int, rank: int):
        super().__init__()
        self.root = Path(root)
        self.units = list(units)                       # (file path under root, row group, rows)
        self.unit_rows = [n for _, _, n in self.units]
        self.columns = list(columns)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.world_size, self.rank = world_size, rank
        self.epoch = SharedEpoch(0)
        self.resume = SharedResume()
        self.total_rows = sum(self.unit_rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)

    def resume_at(self, epoch: int, done: int) -> None:
        """Go on inside ``epoch`` after its ``done`` first batches (a resumed run)."""
        self.epoch.set(epoch)
        self.resume.set(epoch, done)

    def __len__(self) -> int:
        return batches_per_rank(self.total_rows, self.world_size, self.batch_size)

    def plan(self, epoch: int, worker: int = 0, num_workers: int = 1) -> list[Batch]:
        return plan_epoch(self.unit_rows, batch_size=self.batch_size, world_size=self.world_size, rank=self.rank,
                          num_workers=num_workers, worker=worker, seed=self.seed, epoch=epoch, shuffle=self.shuffle)

    def worker_draws(self, epoch: int) -> tuple[list[Batch], list[int], int]:
        """This DataLoader worker's batches for ``epoch``, the seed of its random draws, and how many
        of its first batches a resumed run has trained on already."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        skip = 0
        if done := self.resume.done(epoch):
            counts = [len(self.plan(epoch, w, num_workers)) for w in range(num_workers)]
            skip = worker_skips(counts, done)[worker]
        return self.plan(epoch, worker, num_workers), [self.seed, epoch, self.rank, worker], skip

    #: Batches read and dealt together, rows drawn per batch into its sample pool, and whether the
    #: draws change with the epoch (subclasses set them).
    window: int = 1
    pool: int = 0
    varies_by_epoch: bool = True

    def convert(self, table: pa.Table) -> Any:
        """A work unit's rows as read, in the form ``window_rows`` takes (default: the Arrow table)."""
        return table

    def window_rows(self, batches: Sequence[Batch], units: dict[int, Any]) -> Any:
        """A window's rows, laid end to end in plan order (default: one Arrow table)."""
        return window_table(batches, units)

    def worker_state(self, seed: list[int]) -> Any:
        """Per-iteration state for :meth:`make_batch` (e.g. a torch generator), from the worker's seed."""
        return None

    @abc.abstractmethod
    def make_batch(self, rows: Any, take: np.ndarray, pool: Optional[np.ndarray], epoch: int, state: Any) -> Any:
        """The batch of the window's rows at positions ``take`` (and the sample pool ``pool``)."""

    def skip_batch(self, take: np.ndarray, state: Any) -> None:
        """Make the random draws :meth:`make_batch` would make from ``state`` for a batch of
        ``take``'s rows, without reading them (a resumed run skipping a batch trained on already)."""

    def __iter__(self) -> Iterator[Any]:
        """The one loop of every stream: this worker's plan, a window at a time, rows dealt out again."""
        epoch = self.epoch.get() if self.varies_by_epoch else 0
        plan, seed, skip = self.worker_draws(epoch)
        state = self.worker_state(seed)
        rng = np.random.default_rng(seed)
        for window, units in self.windows(plan, self.window, self.convert, skip=skip):
            rows = self.window_rows(window, units) if units else None
            for take, pool in deal_window([b.size for b in window], rng, self.shuffle, self.pool):
                if skip > 0:
                    skip -= 1
                    self.skip_batch(take, state)
                    yield Skipped()
                else:
                    yield self.make_batch(rows, take, pool, epoch, state)

    def windows(self, plan: Sequence[Batch], window: int, convert: Callable[[pa.Table], Any] = lambda t: t,
                skip: int = 0) -> Iterator[tuple[list[Batch], dict[int, Any]]]:
        """The plan's batches ``window`` at a time, with the work units they read: unit index ->
        ``convert(row group table)``. A unit is read and converted once while consecutive windows
        need it; a window of batches all among the ``skip`` first comes with no units (nothing read)."""
        files: dict[str, pq.ParquetFile] = {}
        cache: dict[int, Any] = {}
        for w in range(0, len(plan), max(1, window)):
            batches = list(plan[w:w + max(1, window)])
            if w + len(batches) <= skip:
                yield batches, {}
                continue
            needed = {u for b in batches for u, _, _ in b.segments}
            cache = {u: t for u, t in cache.items() if u in needed}
            for u in sorted(needed - cache.keys()):
                path, group, _ = self.units[u]
                if path not in files:
                    files[path] = pq.ParquetFile(self.root / path)
                # One thread: a loader worker is one core, and Arrow's pool cost 3x the read's CPU.
                cache[u] = convert(files[path].read_row_group(group, columns=self.columns, use_threads=False))
            yield batches, cache


def window_table(batches: Sequence[Batch], units: dict[int, pa.Table]) -> pa.Table:
    """A window's rows laid end to end in plan order (the positions :func:`deal_window` deals)."""
    return pa.concat_tables([units[u].slice(a, b - a) for bt in batches for u, a, b in bt.segments])




# --- the loader ------------------------------------------------------------------------------------------

def trained_position(trainer: Any) -> tuple[int, int]:
    """A fitting Lightning trainer's epoch and the batches of it trained on so far (at a checkpoint
    saved after a training batch, that batch included)."""
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


class PlannedLoader(DataLoader):
    """The training DataLoader of a :class:`PlannedStream`, which Lightning can resume inside an
    epoch: its ``state_dict`` (saved in every checkpoint) is the epoch and the batches of it trained
    on, read from ``position``; ``load_state_dict`` makes the stream go on at the next batch of the
    same plan (a checkpoint from the end of an epoch: at the next epoch's first)."""

    def __init__(self, dataset: PlannedStream, *, position: Callable[[], tuple[int, int]], **kwargs: Any):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.position = position

    def __iter__(self) -> Iterator[Any]:
        return (batch for batch in super().__iter__() if not isinstance(batch, Skipped))

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.position()
        stream = self.dataset
        return {"epoch": int(epoch), "batches_done": int(done), "batches": len(self),
                "world_size": stream.world_size, "batch_size": stream.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done, planned = int(state["epoch"]), int(state["batches_done"]), int(state["batches"])
        stream = self.dataset
        if done >= planned:                                       # saved at the end of its epoch
            epoch, done = epoch + 1, 0
        elif (planned, state.get("world_size"), state.get("batch_size")) != (len(self), stream.world_size,
                                                                              stream.batch_size):
            raise SetupError(
                f"the checkpoint was saved after batch {done} of {planned} of epoch {epoch}, planned for "
                f"{state.get('world_size')} rank(s) x {state.get('batch_size')} rows; this run plans {len(self)} "
                f"batches for {stream.world_size} x {stream.batch_size}: resume inside an epoch with the "
                "same number of ranks and data.batch_size, or from a checkpoint saved at the end of an epoch")
        self.dataset.resume_at(epoch, done)
