"""Export of image and tag embeddings to Parquet, with a manifest (the input of LocSens and of
evaluation).

Layout of an embeddings directory::

    manifest.json                        what is here (EmbeddingsManifest), written last
    tags.parquet                         index int32, tag string, embedding fixed_size_list<float32>[d]
    images/<split>/part-r<rank>-of-<world>.parquet
                                         photo_id int64, split string, embedding [d],
                                         latitude, longitude, tag_ids list<int32>

Image embeddings come from ``trainer.predict`` over the train/val/test loaders: every rank
writes its own file per split as batches arrive (row groups of ``rows_per_group``), so export
scales with the number of GPUs; after a barrier rank 0 writes the tag embeddings and the
manifest. Only the files the manifest lists are part of the export. Embeddings are stored as the
model produces them (not normalised); ``score`` says how to compare them (``cosine`` or ``dot``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.contract import MANIFEST_NAME

TAGS_FILE = "tags.parquet"
IMAGES_DIR = "images"


def image_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("photo_id", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("latitude", pa.float64(), nullable=False),
        pa.field("longitude", pa.float64(), nullable=False),
        pa.field("tag_ids", pa.list_(pa.int32()), nullable=False),
    ])


def tag_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("index", pa.int32(), nullable=False),
        pa.field("tag", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
    ])


@dataclass
class EmbeddingsManifest:
    model: str
    score: str                               # "cosine" or "dot"
    dim: int
    num_tags: int
    splits: dict[str, dict[str, Any]]        # split -> {"files": [{"path", "rows"}], "rows": n}
    tags_path: str = TAGS_FILE
    extra: dict[str, Any] = field(default_factory=dict)
    #: New at every export: evaluation runs record it, so that the report can tell the runs made on
    #: these embeddings from runs made on embeddings since overwritten ("" in older manifests).
    export_id: str = ""
    #: The model family that exported them (training.models.family; "" in older manifests).
    family: str = ""
    #: The most tags an image has (the shards' ``max_tags``): the width LocSens's loader pads
    #: ``tag_ids`` to (None in older manifests: then the loader measures it).
    max_tags: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: str | Path) -> "EmbeddingsManifest":
        path = Path(directory) / MANIFEST_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path}: no embeddings manifest (export embeddings first)")
        return cls(**json.loads(path.read_text()))


def embeddings_to_arrow(emb: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(np.asarray(emb, dtype=np.float32)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)


def arrow_to_embeddings(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N, d) float32 from a fixed-size-list column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    dim = column.type.list_size
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def read_image_embeddings(directory: str | Path, split: str, columns: Optional[list[str]] = None,
                          manifest: Optional[EmbeddingsManifest] = None) -> pa.Table:
    """All image-embedding rows of one split, from the files the manifest lists (``manifest``: the
    directory's, already read, or one that leaves out files found bad)."""
    manifest = manifest or EmbeddingsManifest.read(directory)
    files = manifest.splits[split]["files"]
    tables = [pq.read_table(Path(directory) / f["path"], columns=columns) for f in files]
    return pa.concat_tables(tables) if tables else image_schema(manifest.dim).empty_table()


def read_tag_embeddings(directory: str | Path) -> tuple[np.ndarray, list[str]]:
    manifest = EmbeddingsManifest.read(directory)
    table = pq.read_table(Path(directory) / manifest.tags_path).sort_by("index")
    return arrow_to_embeddings(table.column("embedding")), table.column("tag").to_pylist()


