"""LocSens's data: MCC's exported image embeddings with their locations and tags, streamed.

The loader streams rows: (file, row group) work units of the embeddings export, planned per epoch
exactly like the image shards (:func:`training.data.plan.plan_epoch`: same seed + epoch order on every
rank, split by rank and worker, the same number of batches per rank). Rows are shuffled within a
window of about ``shuffle_rows`` rows, several row groups of a reshuffled unit order, so that an
image meets new batch-mates every epoch; each training batch also carries a *negative pool*:
``negative_pool`` rows drawn from the whole window, from which :mod:`training.models.negatives` takes
replacement images. Over 30 epochs an image then meets tens of thousands of candidate negatives
instead of the same two thousand neighbours (``bench/locsens_negatives.py``).

``batch_size`` is the global batch (the paper's 1024 positives per step): each of the
``world_size`` ranks takes ``batch_size / world_size``.
"""
from __future__ import annotations

import dataclasses
import warnings
from functools import partial
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from common.contract import MANIFEST_NAME, read_manifest, shard_root
from common.embeddings import (EmbeddingsManifest, arrow_to_embeddings, image_schema, read_image_embeddings,
                               read_tag_embeddings, tag_schema)
from common.metrics import TagSets
from training.data.check import BadFile, CheckedFiles, parquet_problem, same_vocabulary
from training.data.plan import PlannedLoader, PlannedStream, per_rank_batch, trained_position
from training.data.shards import read_vocab
from training.errors import SetupError

COLUMNS = ["photo_id", "embedding", "latitude", "longitude", "tag_ids"]


def pad_tags(tag_lists: pa.Array | pa.ChunkedArray, width: Optional[int] = None) -> np.ndarray:
    """(N, T) int64 tag matrix from a list<int> column, -1 after each row's tags (vectorised);
    ``width``: T (None: the longest row's). A row longer than ``width`` is an error, never cut."""
    ts = TagSets.from_arrow(tag_lists)
    counts = ts.counts
    longest = int(counts.max(initial=1))
    width = int(width or max(1, longest))
    if longest > width:
        raise ValueError(f"an image has {longest} tags, more than the {width} its manifest's max_tags allows")
    out = np.full((len(ts), width), -1, dtype=np.int64)
    cols = np.arange(ts.values.size) - np.repeat(ts.offsets[:-1], counts)
    out[ts.rows(), cols] = ts.values
    return out


def max_tags_of(embeddings_dir: Path, manifest: EmbeddingsManifest) -> int:
    """The width tag lists are padded to: the export's ``max_tags``, or, in an export that does not
    record it, the longest tag list of its files (their ``tag_ids`` column only)."""
    if manifest.max_tags:
        return int(manifest.max_tags)
    longest = 1
    for info in manifest.splits.values():
        for f in info["files"]:
            column = pq.read_table(embeddings_dir / f["path"], columns=["tag_ids"]).column("tag_ids")
            longest = max(longest, int(pc.max(pc.list_value_length(column)).as_py() or 1))
    return longest


def to_tensors(table: pa.Table, max_tags: int) -> dict[str, torch.Tensor]:
    """A batch dict from embedding rows (``COLUMNS``). The embeddings are a read-only view of
    Arrow's buffer, not a copy (a window holds ~300 MB of them): the stream only gathers rows from
    it into new tensors, and never writes to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        embedding = torch.from_numpy(arrow_to_embeddings(table.column("embedding")))
    return {
        "photo_id": torch.from_numpy(table.column("photo_id").to_numpy().astype(np.int64)),
        "embedding": embedding,
        "latitude": torch.from_numpy(table.column("latitude").to_numpy().astype(np.float32)),
        "longitude": torch.from_numpy(table.column("longitude").to_numpy().astype(np.float32)),
        "tag_ids": torch.from_numpy(pad_tags(table.column("tag_ids"), max_tags)),
    }


class EmbeddingStream(PlannedStream):
    """One split of an embeddings export as a stream of batches for one rank (see the module doc)."""

    def __init__(self, embeddings_dir: str | Path, split: str, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0, world_size: int = 1, rank: int = 0, max_tags: Optional[int] = None,
                 shuffle_rows: int = 262_144, negative_pool: int = 0,
                 manifest: Optional[EmbeddingsManifest] = None):
        self.dir = Path(embeddings_dir)
        manifest = manifest or EmbeddingsManifest.read(self.dir)
        if split not in manifest.splits:
            raise KeyError(f"{self.dir}: split {split!r} was not exported (has {sorted(manifest.splits)})")
        units = []
        for f in manifest.splits[split]["files"]:
            meta = pq.ParquetFile(self.dir / f["path"]).metadata
            units += [(f["path"], g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
                      if meta.row_group(g).num_rows > 0]
        super().__init__(self.dir, units, COLUMNS, batch_size=batch_size, shuffle=shuffle, seed=seed,
                         world_size=world_size, rank=rank)
        self.max_tags = max_tags or max_tags_of(self.dir, manifest)
        self.window = max(1, -(-int(shuffle_rows) // batch_size))   # batches shuffled together
        self.pool = int(negative_pool)
        self.varies_by_epoch = shuffle

    def convert(self, table: pa.Table) -> dict[str, torch.Tensor]:
        return to_tensors(table, self.max_tags)

    def window_rows(self, batches, units: dict[int, dict[str, torch.Tensor]]) -> "WindowRows":
        return WindowRows(batches, units)

    def make_batch(self, rows: "WindowRows", take: np.ndarray, pool: Optional[np.ndarray], epoch: int,
                   state: None) -> dict[str, torch.Tensor]:
        batch = rows.gather(take)
        if pool is not None:
            negatives = rows.gather(pool, ("embedding", "tag_ids"))
            batch["pool_embedding"], batch["pool_tag_ids"] = negatives["embedding"], negatives["tag_ids"]
        return batch


class WindowRows:
    """A window's rows, gathered straight from its work units converted to tensors (each row
    group once): a gathered row is copied once, and the window as a whole never is."""

    def __init__(self, batches, units: dict[int, dict[str, torch.Tensor]]):
        segments = [(u, a, b) for bt in batches for u, a, b in bt.segments]
        self.units = units
        self.unit = np.array([u for u, _, _ in segments], dtype=np.int64)
        self.first = np.array([a for _, a, _ in segments], dtype=np.int64)
        sizes = np.array([b - a for _, a, b in segments], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.keys = tuple(next(iter(units.values())))

    def gather(self, positions: np.ndarray, keys: Optional[tuple[str, ...]] = None) -> dict[str, torch.Tensor]:
        """The rows at ``positions`` (of the window laid end to end in plan order), grouped by work
        unit (a batch is a set: its order carries nothing), each copied once into the output."""
        keys = keys or self.keys
        positions = np.sort(positions)
        seg = np.searchsorted(self.starts, positions, side="right") - 1
        unit, row = self.unit[seg], self.first[seg] + positions - self.starts[seg]
        order = np.argsort(unit, kind="stable")
        unit, row = unit[order], torch.from_numpy(row[order])
        bounds = np.flatnonzero(np.diff(unit)) + 1
        some = self.units[int(unit[0])] if len(unit) else next(iter(self.units.values()))
        out = {k: torch.empty((len(positions), *some[k].shape[1:]), dtype=some[k].dtype) for k in keys}
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(unit)]])):
            src = self.units[int(unit[lo])]
            for k in keys:
                torch.index_select(src[k], 0, row[lo:hi], out=out[k][lo:hi])
        return out


class LocSensDataModule(CheckedFiles, pl.LightningDataModule):
    """Train/val streams of an MCC embeddings export, plus whole splits for evaluation.

    ``batch_size`` is global: every rank takes ``batch_size / world_size`` positives a step, so the
    optimisation sees the same batch whatever the number of GPUs.
    """

    def __init__(self, embeddings_dir: str, shards_dir: Optional[str] = None, batch_size: int = 1024,
                 eval_batch_size: Optional[int] = None, num_workers: int = 0, seed: int = 0,
                 persistent_workers: bool = False, shuffle_rows: int = 262_144,
                 negative_pool: int = 1024, on_bad_file: str = "error"):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.embeddings_dir = Path(embeddings_dir)
        self.shards_dir = shard_root(shards_dir) if shards_dir else None
        self._manifest: Optional[EmbeddingsManifest] = None
        self._tags: Optional[np.ndarray] = None
        self._max_tags: Optional[int] = None

    @property
    def manifest(self) -> EmbeddingsManifest:
        if self._manifest is None:
            self._manifest = EmbeddingsManifest.read(self.embeddings_dir)
        return self._manifest

    @property
    def num_tags(self) -> int:
        return int(self.manifest.num_tags)

    @property
    def max_tags(self) -> int:
        """The width of every batch's ``tag_ids`` (from the export's manifest)."""
        if self._max_tags is None:
            self._max_tags = max_tags_of(self.embeddings_dir, self.manifest)
        return self._max_tags

    def check_files(self, defer: bool = False) -> list[BadFile]:
        """Check the export's files (training/data/check.py) and that its tags are the vocabulary of
        ``shards_dir`` before anything reads them; with ``on_bad_file=skip`` the run goes on without
        bad image files. Returns those. ``defer``: the ranks decide together in :meth:`setup`."""
        m, root = self.manifest, self.embeddings_dir
        tags = root / m.tags_path
        problem = parquet_problem(tags, pa.schema([tag_schema(m.dim).field(c) for c in ("index", "tag")]), m.num_tags)
        if problem:
            raise SetupError(f"{tags}: {problem}; export the embeddings again")
        if self.shards_dir is not None and (self.shards_dir / MANIFEST_NAME).exists():
            shards = read_manifest(self.shards_dir)
            vocab = read_vocab(self.shards_dir, shards)
            names = pq.read_table(tags, columns=["index", "tag"]).sort_by("index").column("tag").to_pylist()
            same_vocabulary(names, dict(zip(vocab.column("index").to_pylist(), vocab.column("tag").to_pylist())),
                            shards.vocab_size, tags, self.shards_dir / shards.vocab_path)
        columns = pa.schema([image_schema(m.dim).field(c) for c in COLUMNS])
        files = [f for info in m.splits.values() for f in info["files"]]
        bad = {f["path"]: BadFile(str(root / f["path"]), problem) for f in files
               if (problem := parquet_problem(root / f["path"], columns, f["rows"]))}
        return self._decide([(f["path"], f["rows"]) for f in files], bad, defer)

    @property
    def files_root(self) -> Path:
        return self.embeddings_dir

    @property
    def files_what(self) -> str:
        return f"embeddings export {self.embeddings_dir}"

    def _leave_out(self, bad: Mapping[str, BadFile]) -> None:
        """The manifest without the files ``bad`` names (paths under the root)."""
        gone = set(bad)
        if gone:
            m, splits = self.manifest, {}
            for name, info in m.splits.items():
                kept = [f for f in info["files"] if f["path"] not in gone]
                splits[name] = {**info, "files": kept, "rows": sum(f["rows"] for f in kept)}
            self._manifest = dataclasses.replace(m, splits=splits)

    def tag_embeddings(self) -> np.ndarray:
        if self._tags is None:
            self._tags, _ = read_tag_embeddings(self.embeddings_dir)
        return self._tags

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_rank_batch(self, world_size: int) -> int:
        """Positives per rank and step: the global ``batch_size`` split over ``world_size`` ranks."""
        return per_rank_batch(int(self.hparams.batch_size), world_size)

    def train_batches(self, world_size: int) -> int:
        """Batches every rank trains on in an epoch (without building the training loader)."""
        return len(self._stream("train", train=True, world=(world_size, 0)))

    def _stream(self, split: str, train: bool, world: Optional[tuple[int, int]] = None) -> EmbeddingStream:
        world, rank = world or self._world()
        h = self.hparams
        return EmbeddingStream(self.embeddings_dir, split,
                               batch_size=self.per_rank_batch(world) if train else (h.eval_batch_size or h.batch_size),
                               shuffle=train, seed=h.seed, world_size=world, rank=rank, max_tags=self.max_tags,
                               shuffle_rows=h.shuffle_rows, negative_pool=h.negative_pool, manifest=self.manifest)

    def _loader(self, stream: EmbeddingStream, train: bool = False) -> DataLoader:
        h = self.hparams
        extra = {"persistent_workers": h.persistent_workers} if h.num_workers > 0 else {}
        if train:
            return PlannedLoader(stream, position=partial(trained_position, self.trainer), num_workers=h.num_workers,
                                 **extra)
        return DataLoader(stream, batch_size=None, num_workers=h.num_workers, **extra)

    def train_dataloader(self) -> DataLoader:
        stream = self._stream("train", train=True)
        stream.set_epoch(self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0)
        return self._loader(stream, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._stream("val", train=False))

    def split_arrays(self, split: str) -> dict[str, np.ndarray | TagSets]:
        """A whole split in memory for evaluation: embeddings, locations, tag sets, photo ids."""
        table = read_image_embeddings(self.embeddings_dir, split, columns=COLUMNS, manifest=self.manifest)
        return {"photo_id": table.column("photo_id").to_numpy(),
                "embedding": arrow_to_embeddings(table.column("embedding")),
                "latitude": table.column("latitude").to_numpy(),
                "longitude": table.column("longitude").to_numpy(),
                "truth": TagSets.from_arrow(table.column("tag_ids"))}
