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
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

MANIFEST_NAME = "manifest.json"
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: str | Path) -> "EmbeddingsManifest":
        path = Path(directory) / MANIFEST_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path}: no embeddings manifest (export embeddings first)")
        return cls(**json.loads(path.read_text()))


def embeddings_to_arrow(emb: torch.Tensor | np.ndarray, dim: int) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(np.asarray(emb, dtype=np.float32)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)


def arrow_to_embeddings(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N, d) float32 from a fixed-size-list column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    dim = column.type.list_size
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def read_image_embeddings(directory: str | Path, split: str,
                          columns: Optional[list[str]] = None) -> pa.Table:
    """All image-embedding rows of one split, from the files the manifest lists."""
    manifest = EmbeddingsManifest.read(directory)
    files = manifest.splits[split]["files"]
    tables = [pq.read_table(Path(directory) / f["path"], columns=columns) for f in files]
    return pa.concat_tables(tables) if tables else image_schema(manifest.dim).empty_table()


def read_tag_embeddings(directory: str | Path) -> tuple[np.ndarray, list[str]]:
    manifest = EmbeddingsManifest.read(directory)
    table = pq.read_table(Path(directory) / manifest.tags_path).sort_by("index")
    return arrow_to_embeddings(table.column("embedding")), table.column("tag").to_pylist()


class EmbeddingWriter(BasePredictionWriter):
    """Writes ``predict_step`` outputs of every rank to Parquet and, on rank 0, the manifest."""

    def __init__(self, output_dir: str, rows_per_group: int = 65536):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.rows_per_group = rows_per_group
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._buffers: dict[str, list[dict]] = {}
        self._buffered: dict[str, int] = {}
        self.extra: dict[str, Any] = {}

    def _file(self, split: str, trainer) -> str:
        return f"{IMAGES_DIR}/{split}/part-r{trainer.global_rank:05d}-of-{trainer.world_size:05d}.parquet"

    def _splits(self, trainer) -> list[str]:
        return list(trainer.datamodule.predict_splits)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._writers, self._buffers, self._buffered = {}, {}, {}
        # Every rank writes its files, even when empty, so the manifest lists one per rank.
        dim = int(pl_module.tag_embeddings().shape[1])
        for split in self._splits(trainer):
            path = self.output_dir / self._file(split, trainer)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writers[split] = pq.ParquetWriter(path, image_schema(dim))
            self._buffers[split], self._buffered[split] = [], 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        split = self._splits(trainer)[dataloader_idx]
        self._buffers[split].append({k: v.detach().cpu() for k, v in prediction.items()})
        self._buffered[split] += int(prediction["photo_id"].numel())
        if self._buffered[split] >= self.rows_per_group:
            self._flush(split)

    def _flush(self, split: str) -> None:
        parts = self._buffers[split]
        if not parts:
            return
        writer = self._writers[split]
        dim = writer.schema.field("embedding").type.list_size
        emb = torch.cat([p["embedding"] for p in parts]).numpy()
        offsets, values, base = [np.zeros(1, dtype=np.int32)], [], 0
        for p in parts:
            offsets.append(p["tag_offsets"][1:].numpy().astype(np.int32) + base)
            values.append(p["tag_values"].numpy().astype(np.int32))
            base += int(p["tag_offsets"][-1])
        n = emb.shape[0]
        table = pa.Table.from_arrays([
            pa.array(torch.cat([p["photo_id"] for p in parts]).numpy(), pa.int64()),
            pa.array([split] * n, pa.string()),
            embeddings_to_arrow(emb, dim),
            pa.array(torch.cat([p["latitude"] for p in parts]).double().numpy()),
            pa.array(torch.cat([p["longitude"] for p in parts]).double().numpy()),
            pa.ListArray.from_arrays(pa.array(np.concatenate(offsets)), pa.array(np.concatenate(values))),
        ], schema=writer.schema)
        writer.write_table(table, row_group_size=self.rows_per_group)
        self._buffers[split], self._buffered[split] = [], 0

    def on_predict_end(self, trainer, pl_module) -> None:
        for split, writer in self._writers.items():
            self._flush(split)
            writer.close()
        self._writers = {}
        trainer.strategy.barrier("embeddings-written")
        if trainer.is_global_zero:
            self.write_manifest(trainer, pl_module)
        trainer.strategy.barrier("embeddings-manifest")

    def write_manifest(self, trainer, pl_module) -> EmbeddingsManifest:
        from training.data import read_vocab

        dm = trainer.datamodule
        tags = pl_module.tag_embeddings().detach().float().cpu().numpy()
        dim = tags.shape[1]
        vocab = read_vocab(dm.shards_dir, dm.manifest)
        names = dict(zip(vocab.column("index").to_pylist(), vocab.column("tag").to_pylist()))
        table = pa.Table.from_arrays([
            pa.array(np.arange(tags.shape[0], dtype=np.int32)),
            pa.array([names.get(i, "") for i in range(tags.shape[0])], pa.string()),
            embeddings_to_arrow(tags, dim),
        ], schema=tag_schema(dim))
        pq.write_table(table, self.output_dir / TAGS_FILE)
        splits = {}
        for split in self._splits(trainer):
            files = []
            for rank in range(trainer.world_size):
                rel = f"{IMAGES_DIR}/{split}/part-r{rank:05d}-of-{trainer.world_size:05d}.parquet"
                files.append({"path": rel, "rows": pq.ParquetFile(self.output_dir / rel).metadata.num_rows})
            splits[split] = {"files": files, "rows": sum(f["rows"] for f in files)}
        manifest = EmbeddingsManifest(
            model=type(pl_module).__name__, score=pl_module.score, dim=dim, num_tags=tags.shape[0],
            splits=splits, extra={"shards_dir": str(Path(dm.shards_dir).resolve()), **self.extra},
            export_id=uuid.uuid4().hex)
        self._remove_stale(splits)
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=self.output_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(manifest.to_json())
        os.replace(tmp, self.output_dir / MANIFEST_NAME)
        return manifest

    def _remove_stale(self, splits: dict) -> None:
        """Delete image files a previous export (another world size) left behind."""
        listed = {self.output_dir / f["path"] for s in splits.values() for f in s["files"]}
        for path in (self.output_dir / IMAGES_DIR).glob("*/part-*.parquet"):
            if path not in listed:
                path.unlink()
