"""The contract between the Spark pipeline and the training code: shard layout and manifest.

``jobs/shard_dataset.py`` writes train/val/test Parquet shards with :data:`SHARD_SCHEMA` and a
``manifest.json`` (:class:`Manifest`); the training loaders read the manifest instead of listing
files, and split work into (file, row group) units. This module imports pyarrow only, never Spark
or torch, so both sides can depend on it.

Vocabulary files (``vocab.parquet``): ``index`` int32 (0..V-1, frequency order), ``tag`` string,
``count`` int64. Place names (``place_names.parquet``): ``name`` string (normalised like tags),
``level`` string (continent, country, region, town).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa

from common import published
from common.files import atomic_write

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: One row per image in a training shard. ``tag_ids`` are vocabulary indices (distinct, 1-15).
SHARD_SCHEMA = pa.schema([
    pa.field("photo_id", pa.int64(), nullable=False),
    pa.field("user_nsid", pa.string()),
    pa.field("latitude", pa.float64(), nullable=False),
    pa.field("longitude", pa.float64(), nullable=False),
    pa.field("tag_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("town", pa.string()),
    pa.field("region", pa.string()),
    pa.field("country", pa.string()),
    pa.field("continent", pa.string()),
    pa.field("image", pa.binary(), nullable=False),  # JPEG, short side = Manifest.image_size
])

VOCAB_SCHEMA = pa.schema([
    pa.field("index", pa.int32(), nullable=False),
    pa.field("tag", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
])

PLACE_NAMES_SCHEMA = pa.schema([
    pa.field("name", pa.string(), nullable=False),
    pa.field("level", pa.string(), nullable=False),
])


@dataclass
class ShardFile:
    """One Parquet file of a split: its path relative to the manifest and rows per row group."""

    path: str
    row_groups: list[int]

    @property
    def rows(self) -> int:
        return sum(self.row_groups)


@dataclass
class SplitInfo:
    files: list[ShardFile] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass
class Manifest:
    """What a shard directory holds; written last, so its presence means the shards are complete."""

    vocab_size: int
    image_size: int
    splits: dict[str, SplitInfo]
    vocab_path: str = "vocab.parquet"
    place_names_path: str = "place_names.parquet"
    version: int = MANIFEST_VERSION
    extra: dict = field(default_factory=dict)
    #: The most vocabulary tags an image may have (build_vocab's ``vocab.max_tags``): the width
    #: loaders pad tag lists to. None in manifests written before it was recorded.
    max_tags: Optional[int] = None

    def work_units(self, split: str) -> list[tuple[str, int, int]]:
        """(file path, row group index, rows) for every row group of a split, in manifest order."""
        if split not in self.splits:
            raise KeyError(f"split {split!r} not in manifest (has {sorted(self.splits)})")
        return [(f.path, i, n) for f in self.splits[split].files for i, n in enumerate(f.row_groups)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if d.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {d.get('version')!r}, this code reads {MANIFEST_VERSION}")
        splits = {
            name: SplitInfo([ShardFile(f["path"], list(f["row_groups"])) for f in s["files"]])
            for name, s in d["splits"].items()
        }
        return cls(vocab_size=d["vocab_size"], image_size=d["image_size"], splits=splits,
                   vocab_path=d.get("vocab_path", "vocab.parquet"),
                   place_names_path=d.get("place_names_path", "place_names.parquet"),
                   version=d["version"], extra=d.get("extra", {}), max_tags=d.get("max_tags"))


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename): readers never see half of it."""
    return atomic_write(Path(directory) / MANIFEST_NAME, manifest.to_json())


def shard_root(directory: str | os.PathLike) -> Path:
    """The folder whose ``manifest.json`` describes the shards of ``directory``: the directory
    itself when it holds one (shards written by hand or by tests), else the version that
    shard_dataset published there (:mod:`common.published`). Idempotent, so every reader may
    call it on whatever path it is given."""
    directory = Path(directory)
    if (directory / MANIFEST_NAME).exists():
        return directory
    pointer = published.published_pointer(directory)
    return directory / pointer.version if pointer else directory


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Read a shard directory's manifest, with a message that names the path when it is missing."""
    path = shard_root(directory) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shard manifest (run jobs/shard_dataset.py first)")
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable shard manifest: {exc}") from exc


def iter_split_files(directory: str | os.PathLike, manifest: Manifest, split: str) -> Iterator[Path]:
    for f in manifest.splits[split].files:
        yield Path(directory) / f.path
