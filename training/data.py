"""Streaming the Parquet shards (``pipeline.contract``) into training batches.

The unit of work is one row group of one shard file. Each epoch:

1. the work units are shuffled with ``seed + epoch`` (the same permutation on every rank);
2. their rows, laid end to end, are cut into ``world_size`` contiguous ranges of equal size (+-1);
3. every rank cuts its range into the same number of batches (:func:`batches_per_rank`) of
   near-equal size, so no rank waits for another at the end of an epoch, and every row is read
   exactly once;
4. a rank's batches are dealt to its DataLoader workers in contiguous blocks, so a worker reads
   few row groups and each one at most a couple of times;
5. each worker shuffles rows inside a window of a few batches (seeded), decodes the JPEGs and
   builds whole-batch tensors.

Batches are built inside the dataset (``DataLoader(batch_size=None)``): images travel as uint8
(normalisation happens on the device), tags as CSR (``tag_values``, ``tag_offsets``) so that
multi-hot or word-vector targets are built on the device instead of shipped through worker pipes.
MCC's target, one tag drawn at random per load, is a hash of (photo_id, seed, epoch): the same
whatever the number of ranks and workers.

Parquet files are opened inside the workers, never in the main process.
"""
from __future__ import annotations

import io
import logging
import math
import multiprocessing as mp
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.contract import Manifest, read_manifest
from pipeline.metrics import TagSets

log = logging.getLogger(__name__)
# ShardStream.__len__ is exact for every rank and worker split (plan_epoch): Lightning's generic
# caution about IterableDataset lengths does not apply, nor its batch-index tracking in predict.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched")

#: Columns a training/prediction batch needs (the shards hold more).
BATCH_COLUMNS = ("photo_id", "latitude", "longitude", "tag_ids", "image")


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


# --- decoding ---------------------------------------------------------------------------------------------

def decode_image(jpeg: bytes, resize: Optional[int], crop: int, train: bool,
                 gen: Optional[torch.Generator]) -> np.ndarray:
    """JPEG -> (crop, crop, 3) uint8: short side resized to ``resize`` (None: as stored, but at
    least ``crop``), then a random crop (train) or the centre crop (eval)."""
    im = Image.open(io.BytesIO(jpeg))
    target = max(resize or 0, crop)
    im.draft("RGB", (target, target))  # JPEG DCT scaling: decode no larger than needed
    im = im.convert("RGB")
    w, h = im.size
    short = min(w, h)
    if (resize and short != resize) or short < crop:
        scale = target / short
        im = im.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.BILINEAR)
        w, h = im.size
    if train:
        r = torch.randint(0, 1 << 30, (2,), generator=gen).tolist()
        x, y = r[0] % (w - crop + 1), r[1] % (h - crop + 1)
    else:
        x, y = (w - crop) // 2, (h - crop) // 2
    return np.asarray(im.crop((x, y, x + crop, y + crop)))


def to_batch(table: pa.Table, *, resize: Optional[int], crop: int, train: bool, seed: int, epoch: int,
             gen: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
    """A pyarrow table of shard rows -> the batch dict every model consumes."""
    photo_id = table.column("photo_id").to_numpy().copy()  # arrow buffers are read-only
    tags = TagSets.from_arrow(table.column("tag_ids"))
    images = np.stack([decode_image(b, resize, crop, train, gen)
                       for b in table.column("image").to_pylist()])
    image = torch.from_numpy(images).permute(0, 3, 1, 2)
    if train:
        flip = torch.rand(image.shape[0], generator=gen) < 0.5
        image = torch.where(flip[:, None, None, None], image.flip(-1), image)
    return {
        "photo_id": torch.from_numpy(photo_id),
        "image": image.contiguous(),
        "tag": torch.from_numpy(draw_one_tag(photo_id, tags.offsets, tags.values, seed, epoch)),
        "tag_values": torch.from_numpy(tags.values.copy()),
        "tag_offsets": torch.from_numpy(tags.offsets.copy()),
        "latitude": torch.from_numpy(table.column("latitude").to_numpy().copy()),
        "longitude": torch.from_numpy(table.column("longitude").to_numpy().copy()),
    }


# --- the dataset ------------------------------------------------------------------------------------------

class SharedEpoch:
    """The epoch number, visible to persistent DataLoader workers (a shared-memory int)."""

    def __init__(self, epoch: int = 0):
        self.value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self.value.value = epoch

    def get(self) -> int:
        return self.value.value


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


class PlannedStream(IterableDataset):
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
        self.total_rows = sum(self.unit_rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)

    def __len__(self) -> int:
        return batches_per_rank(self.total_rows, self.world_size, self.batch_size)

    def plan(self, epoch: int, worker: int = 0, num_workers: int = 1) -> list[Batch]:
        return plan_epoch(self.unit_rows, batch_size=self.batch_size, world_size=self.world_size, rank=self.rank,
                          num_workers=num_workers, worker=worker, seed=self.seed, epoch=epoch, shuffle=self.shuffle)

    def worker_draws(self, epoch: int) -> tuple[list[Batch], list[int]]:
        """This DataLoader worker's batches for ``epoch`` and the seed of its random draws."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        return self.plan(epoch, worker, num_workers), [self.seed, epoch, self.rank, worker]

    def windows(self, plan: Sequence[Batch], window: int,
                convert: Callable[[pa.Table], Any] = lambda t: t) -> Iterator[tuple[list[Batch], dict[int, Any]]]:
        """The plan's batches ``window`` at a time, with the work units they read: unit index ->
        ``convert(row group table)``. A unit is read and converted once while consecutive windows
        need it."""
        files: dict[str, pq.ParquetFile] = {}
        cache: dict[int, Any] = {}
        for w in range(0, len(plan), max(1, window)):
            batches = list(plan[w:w + max(1, window)])
            needed = {u for b in batches for u, _, _ in b.segments}
            cache = {u: t for u, t in cache.items() if u in needed}
            for u in sorted(needed - cache.keys()):
                path, group, _ = self.units[u]
                if path not in files:
                    files[path] = pq.ParquetFile(self.root / path)
                cache[u] = convert(files[path].read_row_group(group, columns=self.columns))
            yield batches, cache


def window_table(batches: Sequence[Batch], units: dict[int, pa.Table]) -> pa.Table:
    """A window's rows laid end to end in plan order (the positions :func:`deal_window` deals)."""
    return pa.concat_tables([units[u].slice(a, b - a) for bt in batches for u, a, b in bt.segments])


class ShardStream(PlannedStream):
    """One split of a shard directory as a stream of ready-made batches for one rank."""

    def __init__(self, shards_dir: str | Path, split: str, *, batch_size: int, crop: int,
                 resize: Optional[int] = None, train: bool = False, shuffle: bool = False,
                 shuffle_window: int = 8, seed: int = 0, world_size: int = 1, rank: int = 0,
                 manifest: Optional[Manifest] = None, columns: Sequence[str] = BATCH_COLUMNS):
        self.shards_dir = Path(shards_dir)
        manifest = manifest or read_manifest(self.shards_dir)
        self.split = split
        super().__init__(self.shards_dir, manifest.work_units(split), columns, batch_size=batch_size,
                         shuffle=shuffle, seed=seed, world_size=world_size, rank=rank)
        self.crop, self.resize = crop, resize
        self.train, self.shuffle_window = train, max(1, shuffle_window)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Training draws change with the epoch; evaluation always sees the same data.
        epoch = self.epoch.get() if self.train else 0
        plan, seed = self.worker_draws(epoch)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        rng = np.random.default_rng(seed)
        for window, units in self.windows(plan, self.shuffle_window):
            rows = window_table(window, units)
            for take, _ in deal_window([b.size for b in window], rng, self.shuffle):
                yield to_batch(rows.take(pa.array(take)), resize=self.resize, crop=self.crop,
                               train=self.train, seed=self.seed, epoch=epoch, gen=gen)


def read_split_columns(shards_dir: str | Path, split: str, columns: Sequence[str],
                       manifest: Optional[Manifest] = None) -> pa.Table:
    """Some (light) columns of a whole split, in manifest order: tags and locations, not images."""
    manifest = manifest or read_manifest(shards_dir)
    tables = [pq.read_table(Path(shards_dir) / f.path, columns=list(columns))
              for f in manifest.splits[split].files]
    if not tables:
        raise ValueError(f"split {split!r} of {shards_dir} has no files")
    return pa.concat_tables(tables)


def read_split_images(shards_dir: str | Path, split: str, photo_ids: Sequence[int],
                      manifest: Optional[Manifest] = None) -> dict[int, bytes]:
    """The JPEG bytes of a few photos of a split, by photo_id: a filtered read, so only the
    row groups whose statistics may hold them are decoded, not the split's every image."""
    manifest = manifest or read_manifest(shards_dir)
    wanted = sorted({int(i) for i in photo_ids})
    out: dict[int, bytes] = {}
    if not wanted:
        return out
    for f in manifest.splits[split].files:
        t = pq.read_table(Path(shards_dir) / f.path, columns=["photo_id", "image"],
                          filters=[("photo_id", "in", wanted)])
        out.update(zip(t.column("photo_id").to_pylist(), t.column("image").to_pylist()))
    return out


def read_vocab(shards_dir: str | Path, manifest: Optional[Manifest] = None) -> pa.Table:
    manifest = manifest or read_manifest(shards_dir)
    return pq.read_table(Path(shards_dir) / manifest.vocab_path).sort_by("index")


def place_mask(shards_dir: str | Path, manifest: Optional[Manifest] = None) -> np.ndarray:
    """Boolean vocabulary mask of the tags that are place names (supplement, Table 2)."""
    manifest = manifest or read_manifest(shards_dir)
    vocab = read_vocab(shards_dir, manifest)
    path = Path(shards_dir) / manifest.place_names_path
    if not path.exists():
        log.warning("%s missing: no place names to omit", path)
        return np.zeros(manifest.vocab_size, dtype=bool)
    names = set(pq.read_table(path, columns=["name"]).column("name").to_pylist())
    mask = np.zeros(manifest.vocab_size, dtype=bool)
    idx = vocab.column("index").to_numpy()
    mask[idx] = np.array([t in names for t in vocab.column("tag").to_pylist()], dtype=bool)
    return mask


# --- the Lightning data module --------------------------------------------------------------------------

class ShardDataModule(pl.LightningDataModule):
    """Train/val/test shards of one manifest; ranks and world size come from the trainer."""

    def __init__(self, shards_dir: str, batch_size: int = 64, eval_batch_size: Optional[int] = None,
                 crop: int = 224, resize: Optional[int] = None, num_workers: int = 0,
                 shuffle_window: int = 8, seed: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, prefetch_factor: Optional[int] = None,
                 predict_splits: Sequence[str] = ("train", "val", "test")):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.shards_dir = Path(shards_dir)
        self._manifest: Optional[Manifest] = None
        self.predict_splits = list(predict_splits)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.shards_dir)
        return self._manifest

    @property
    def num_tags(self) -> int:
        return self.manifest.vocab_size

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def stream(self, split: str, train: bool) -> ShardStream:
        world_size, rank = self._world()
        h = self.hparams
        return ShardStream(self.shards_dir, split, manifest=self.manifest,
                           batch_size=h.batch_size if train else (h.eval_batch_size or h.batch_size),
                           crop=h.crop, resize=h.resize, train=train, shuffle=train,
                           shuffle_window=h.shuffle_window, seed=h.seed,
                           world_size=world_size, rank=rank)

    def _loader(self, dataset: ShardStream) -> DataLoader:
        h = self.hparams
        kwargs = {}
        if h.num_workers > 0:
            kwargs["persistent_workers"] = h.persistent_workers
            if h.prefetch_factor:
                kwargs["prefetch_factor"] = h.prefetch_factor
        return DataLoader(dataset, batch_size=None, num_workers=h.num_workers,
                          pin_memory=h.pin_memory, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.stream("train", train=True))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.stream("val", train=False))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.stream("test", train=False))

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.stream(s, train=False)) for s in self.predict_splits]

    def tag_sets(self, split: str) -> TagSets:
        return TagSets.from_arrow(read_split_columns(self.shards_dir, split, ["tag_ids"],
                                                     self.manifest).column("tag_ids"))
