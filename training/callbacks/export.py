"""The export callback: writes ``predict_step`` outputs of every rank to an embeddings directory
in the layout of :mod:`common.embeddings`, and on rank 0 the tag embeddings and the manifest."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from common.embeddings import (IMAGES_DIR, MANIFEST_NAME, TAGS_FILE, EmbeddingsManifest, embeddings_to_arrow,
                               image_schema, tag_schema)
from common.files import atomic_write
from training.data.shards import read_vocab
from training.ranks import is_rank_zero


def held_copy(prediction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A prediction's tensors copied to the CPU, to be buffered until a row group is full. Always
    copies: on the CPU, ``photo_id`` and the other columns are views of the batch, whose storage in
    a loader worker is its whole block of shared memory (pixels included), which would be held for
    as many batches as a row group takes and kept from the worker's reuse."""
    return {k: v.detach().to("cpu", copy=True) for k, v in prediction.items()}


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
        self._buffers[split].append(held_copy(prediction))
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
        if is_rank_zero():
            self.write_manifest(trainer, pl_module)
        trainer.strategy.barrier("embeddings-manifest")

    def write_manifest(self, trainer, pl_module) -> EmbeddingsManifest:
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
            export_id=uuid.uuid4().hex, family=pl_module.family.name, max_tags=dm.manifest.max_tags)
        self._remove_stale(splits)
        atomic_write(self.output_dir / MANIFEST_NAME, manifest.to_json())
        return manifest

    def _remove_stale(self, splits: dict) -> None:
        """Delete image files a previous export (another world size) left behind."""
        listed = {self.output_dir / f["path"] for s in splits.values() for f in s["files"]}
        for path in (self.output_dir / IMAGES_DIR).glob("*/part-*.parquet"):
            if path not in listed:
                path.unlink()
