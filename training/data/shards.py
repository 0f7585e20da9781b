"""Streaming the Parquet shards (:mod:`common.contract`) into training batches, and reading whole
splits of them for evaluation.

Batches are built inside the dataset (``DataLoader(batch_size=None)``) by
:class:`~training.data.plan.PlannedStream` and :func:`training.data.images.to_batch`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from functools import partial
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from common.contract import SHARD_SCHEMA, Manifest, SplitInfo, read_manifest, shard_root
from common.metrics import TagSets
from training.data.check import BadFile, CheckedFiles, parquet_problem
from training.data.images import DECODE, decode_batch, to_batch, train_draws
from training.data.plan import PlannedLoader, PlannedStream, per_rank_batch, trained_position
from training.errors import SetupError

log = logging.getLogger(__name__)

#: Columns a training/prediction batch needs (the shards hold more).
BATCH_COLUMNS = ("photo_id", "latitude", "longitude", "tag_ids", "image")


class ShardStream(PlannedStream):
    """One split of a shard directory as a stream of ready-made batches for one rank."""

    def __init__(self, shards_dir: str | Path, split: str, *, batch_size: int, crop: int,
                 resize: Optional[int] = None, train: bool = False, shuffle: bool = False,
                 shuffle_window: int = 8, seed: int = 0, world_size: int = 1, rank: int = 0,
                 manifest: Optional[Manifest] = None, columns: Sequence[str] = BATCH_COLUMNS, decode: str = "cpu"):
        self.shards_dir = shard_root(shards_dir)
        manifest = manifest or read_manifest(self.shards_dir)
        self.split = split
        super().__init__(self.shards_dir, manifest.work_units(split), columns, batch_size=batch_size,
                         shuffle=shuffle, seed=seed, world_size=world_size, rank=rank)
        self.crop, self.resize = crop, resize
        if decode not in DECODE:
            raise SetupError(f"data.decode={decode!r}: use one of {DECODE}")
        self.decode = decode
        self.train, self.window = train, max(1, shuffle_window)
        self.varies_by_epoch = train   # training draws change with the epoch; evaluation sees the same data

    def worker_state(self, seed: list[int]) -> torch.Generator:
        """The generator of crops and flips."""
        return torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))

    def make_batch(self, rows: pa.Table, take: np.ndarray, pool: Optional[np.ndarray], epoch: int,
                   state: torch.Generator) -> dict[str, torch.Tensor]:
        return to_batch(rows, take=take, resize=self.resize, crop=self.crop, train=self.train, seed=self.seed,
                        epoch=epoch, gen=state, decode=self.decode)

    def skip_batch(self, take: np.ndarray, state: torch.Generator) -> None:
        if self.train:
            train_draws(len(take), state)


def read_split_columns(shards_dir: str | Path, split: str, columns: Sequence[str],
                       manifest: Optional[Manifest] = None) -> pa.Table:
    """Some (light) columns of a whole split, in manifest order: tags and locations, not images."""
    shards_dir = shard_root(shards_dir)
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
    shards_dir = shard_root(shards_dir)
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
    shards_dir = shard_root(shards_dir)
    manifest = manifest or read_manifest(shards_dir)
    return pq.read_table(Path(shards_dir) / manifest.vocab_path).sort_by("index")


def place_mask(shards_dir: str | Path, manifest: Optional[Manifest] = None) -> np.ndarray:
    """Boolean vocabulary mask of the tags that are place names (supplement, Table 2)."""
    shards_dir = shard_root(shards_dir)
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


def loader_workers(setting: Optional[int], local_ranks: int, cores: Optional[int] = None) -> int:
    """DataLoader workers per rank: the setting, or (null) this node's cores shared by its ranks,
    less one for the rank's own process, at least one. JPEG decoding is the loader's work, and it
    scales with cores until the GPU is fed."""
    if setting is not None:
        return int(setting)
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, cores // max(1, local_ranks) - 1)


# --- the Lightning data module --------------------------------------------------------------------------

class ShardDataModule(CheckedFiles, pl.LightningDataModule):
    """Train/val/test shards of one manifest; ranks and world size come from the trainer.

    ``batch_size`` is the global batch, as LocSens's is: every rank takes ``batch_size / world_size``
    images a step (evaluation batches, ``eval_batch_size``, are per rank).
    """

    def __init__(self, shards_dir: str, batch_size: int = 64, eval_batch_size: Optional[int] = None,
                 crop: int = 224, resize: Optional[int] = None, num_workers: Optional[int] = 0,
                 shuffle_window: int = 8, seed: int = 0, pin_memory: Optional[bool] = False,
                 persistent_workers: bool = False, prefetch_factor: Optional[int] = None,
                 predict_splits: Sequence[str] = ("train", "val", "test"), on_bad_file: str = "error",
                 decode: str = "cpu"):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.shards_dir = shard_root(shards_dir)   # the published version: every rank reads the same one
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

    def check_files(self, defer: bool = False) -> list[BadFile]:
        """Check every listed shard's footer (training/data/check.py) before anything reads them;
        with ``on_bad_file=skip`` the run goes on without the bad ones. Returns those.

        ``defer`` (a run of several processes): the decision waits for :meth:`setup`, where the
        ranks make it together (:func:`~training.data.check.agree_on_files`)."""
        columns = pa.schema([SHARD_SCHEMA.field(c) for c in BATCH_COLUMNS])
        files = [(split, f) for split, info in self.manifest.splits.items() for f in info.files]
        bad = {f.path: BadFile(str(self.shards_dir / f.path), problem) for _, f in files
               if (problem := parquet_problem(self.shards_dir / f.path, columns, f.rows))}
        return self._decide([(f.path, f.rows) for _, f in files], bad, defer)

    @property
    def files_root(self) -> Path:
        return self.shards_dir

    @property
    def files_what(self) -> str:
        return f"shards of {self.shards_dir}"

    def _leave_out(self, bad: Mapping[str, BadFile]) -> None:
        """The manifest without the files ``bad`` names (paths under the root)."""
        gone = set(bad)
        if gone:
            m = self.manifest
            splits = {name: SplitInfo([f for f in info.files if f.path not in gone])
                      for name, info in m.splits.items()}
            self._manifest = dataclasses.replace(m, splits=splits)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def per_rank_batch(self, world_size: int) -> int:
        """Images per rank and step: the global ``batch_size`` split over ``world_size`` ranks."""
        return per_rank_batch(int(self.hparams.batch_size), world_size)

    def train_batches(self, world_size: int) -> int:
        """Batches every rank trains on in an epoch (without building the training loader)."""
        return len(self.stream("train", train=True, world=(world_size, 0)))

    def stream(self, split: str, train: bool, world: Optional[tuple[int, int]] = None) -> ShardStream:
        world_size, rank = world or self._world()
        h = self.hparams
        return ShardStream(self.shards_dir, split, manifest=self.manifest,
                           batch_size=(self.per_rank_batch(world_size) if train or not h.eval_batch_size
                                       else h.eval_batch_size),
                           crop=h.crop, resize=h.resize, train=train, shuffle=train,
                           shuffle_window=h.shuffle_window, seed=h.seed,
                           world_size=world_size, rank=rank, decode=h.decode)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """``decode="device"``: the batch's JPEGs decoded on the training device (from host memory,
        as nvJPEG takes them), then the rest moved as usual."""
        if isinstance(batch, dict) and "jpeg" in batch:
            batch = dict(batch)
            batch["image"] = decode_batch(batch.pop("jpeg"), batch.pop("jpeg_offsets"), self.hparams.crop,
                                          self.hparams.resize, batch.pop("crop_draws", None), device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _loader(self, dataset: ShardStream, train: bool = False) -> DataLoader:
        h = self.hparams
        workers = loader_workers(h.num_workers, self._local_ranks())
        pin = h.pin_memory if h.pin_memory is not None else self._on_gpu()
        kwargs = {}
        if workers > 0:
            kwargs["persistent_workers"] = h.persistent_workers
            if h.prefetch_factor:
                kwargs["prefetch_factor"] = h.prefetch_factor
        if train:
            return PlannedLoader(dataset, position=partial(trained_position, self.trainer),
                                 num_workers=workers, pin_memory=pin, **kwargs)
        return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin, **kwargs)

    def _local_ranks(self) -> int:
        trainer = getattr(self, "trainer", None)
        return max(1, int(trainer.num_devices)) if trainer is not None else 1

    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        stream = self.stream("train", train=True)
        stream.set_epoch(self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0)
        return self._loader(stream, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.stream("val", train=False))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.stream("test", train=False))

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.stream(s, train=False)) for s in self.predict_splits]

    def tag_sets(self, split: str) -> TagSets:
        return TagSets.from_arrow(read_split_columns(self.shards_dir, split, ["tag_ids"],
                                                     self.manifest).column("tag_ids"))
