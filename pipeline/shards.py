"""shard_dataset transforms: assign rows to shard files, then write each file from its partition.

The split's rows are spread over ``ceil(rows / rows_per_file)`` files by a seeded hash of
photo_id and ordered inside each file by another, so rows are in random (but reproducible)
order within a split. Only narrow metadata is shuffled; each partition then reads and resizes
its own images (:mod:`pipeline.images`) while writing its Parquet files with pyarrow, in exactly
:data:`common.contract.SHARD_SCHEMA` and with row groups of exactly ``rows_per_row_group`` rows
(the last one shorter). The writer emits one record per file and per rejected row, from which the
job builds the manifest and the rejects table.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from common.contract import SHARD_SCHEMA, ShardFile, SplitInfo
from pipeline import images

RECORD_SCHEMA = "kind string, split string, path string, row_groups array<bigint>, photo_id bigint, reason string"
_RECORD_ARROW = pa.schema([("kind", pa.string()), ("split", pa.string()), ("path", pa.string()),
                           ("row_groups", pa.list_(pa.int64())), ("photo_id", pa.int64()), ("reason", pa.string())])
METADATA_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name != "image"]


def files_per_split(split_rows: dict[str, int], rows_per_file: int) -> dict[str, int]:
    return {s: max(1, math.ceil(n / rows_per_file)) for s, n in split_rows.items()}


def assign_shards(df: DataFrame, n_files: dict[str, int], seed: int) -> DataFrame:
    """Add ``shard`` (file number within the split) and ``_order`` (row order within a file)."""
    h = F.xxhash64(F.lit(seed).cast("long"), F.col("photo_id"))
    shard = None
    for split, n in n_files.items():
        expr = F.pmod(h, F.lit(n))
        shard = F.when(F.col("split") == split, expr) if shard is None else shard.when(F.col("split") == split, expr)
    return (df.withColumn("shard", shard.cast("int"))
            .withColumn("_order", F.xxhash64(F.lit(seed + 1).cast("long"), F.col("photo_id"))))


def image_relpath_col(photo_hash: str = "photo_hash") -> F.Column:
    """``<h[0:3]>/<h[3:6]>/<h>.jpg`` as a column (same rule as :func:`pipeline.yfcc.image_relpath`)."""
    h = F.col(photo_hash)
    return F.concat(F.substring(h, 1, 3), F.lit("/"), F.substring(h, 4, 3), F.lit("/"), h, F.lit(".jpg"))


def shard_path(split: str, shard: int) -> str:
    return f"{split}/part-{shard:05d}.parquet"


class _FileWriter:
    """One shard file being written: buffered rows flushed as whole row groups."""

    def __init__(self, fs, base: str, split: str, shard: int, rows_per_group: int):
        self.fs, self.rel = fs, shard_path(split, shard)
        self.final = f"{base}/{self.rel}"
        self.tmp = f"{base}/{split}/.part-{shard:05d}.parquet.inprogress"
        fs.create_dir(f"{base}/{split}", recursive=True)
        self.split, self.rows_per_group = split, rows_per_group
        self.rows: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
        self.groups: list[int] = []
        self.writer: Optional[pq.ParquetWriter] = None

    def add(self, row: dict) -> None:
        for k, col in self.rows.items():
            col.append(row[k])
        if len(self.rows["photo_id"]) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        n = len(self.rows["photo_id"])
        if n == 0:
            return
        table = pa.Table.from_pydict(self.rows, schema=SHARD_SCHEMA)
        if self.writer is None:
            compression = {name: ("NONE" if name == "image" else "ZSTD") for name in SHARD_SCHEMA.names}
            # Non-compliant nested names keep list<item> so the files read back as SHARD_SCHEMA exactly.
            self.writer = pq.ParquetWriter(self.tmp, SHARD_SCHEMA, filesystem=self.fs, compression=compression,
                                           use_compliant_nested_type=False)
        self.writer.write_table(table, row_group_size=n)
        self.groups.append(n)
        self.rows = {name: [] for name in SHARD_SCHEMA.names}

    def close(self) -> Optional[dict]:
        self._flush()
        if self.writer is None:
            return None
        self.writer.close()
        self.fs.move(self.tmp, self.final)
        return {"kind": "file", "split": self.split, "path": self.rel, "row_groups": self.groups,
                "photo_id": None, "reason": None}


def shard_writer(out_dir: str, image_root: Optional[str], short_side: int, quality: int,
                 rows_per_group: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: rows sorted by (split, shard, _order) in, records out.

    Rows carry either ``image_src`` (bytes, from img2dataset) or ``image_path`` (relative to
    ``image_root``). Files are written under a temp name and moved into place when complete, so a
    retried task rewrites the same file.
    """

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fs, base = images.filesystem(out_dir)
        current: Optional[_FileWriter] = None
        for batch in batches:
            d = batch.to_pydict()
            n = batch.num_rows
            srcs = d.get("image_src", [None] * n)
            paths = d.get("image_path", [None] * n)
            records = []
            for i in range(n):
                split, shard = d["split"][i], d["shard"][i]
                if current is None or (current.split, current.rel) != (split, shard_path(split, shard)):
                    if current is not None and (rec := current.close()) is not None:
                        records.append(rec)
                    current = _FileWriter(fs, base, split, shard, rows_per_group)
                try:
                    image = images.load_image(srcs[i], paths[i], image_root, short_side, quality)
                except images.ImageError as exc:
                    records.append({"kind": "reject", "split": split, "path": paths[i], "row_groups": None,
                                    "photo_id": d["photo_id"][i], "reason": exc.reason})
                    continue
                current.add({**{k: d[k][i] for k in METADATA_COLUMNS}, "image": image})
            if records:
                yield pa.RecordBatch.from_pylist(records, schema=_RECORD_ARROW)
        if current is not None and (rec := current.close()) is not None:
            yield pa.RecordBatch.from_pylist([rec], schema=_RECORD_ARROW)

    return write


def write_shards(df: DataFrame, n_files: dict[str, int], out_dir: str, image_root: Optional[str], *,
                 short_side: int, quality: int, rows_per_group: int) -> DataFrame:
    """Records (files written, rows rejected) of writing ``df`` (with ``shard``, ``_order``)."""
    total = sum(n_files.values())
    ordered = df.repartition(total, "split", "shard").sortWithinPartitions("split", "shard", "_order")
    fn = shard_writer(out_dir, image_root, short_side, quality, rows_per_group)
    return ordered.mapInArrow(fn, RECORD_SCHEMA)


def splits_from_records(files: list[dict]) -> dict[str, SplitInfo]:
    """Manifest splits from the writer's file records, files in path order."""
    out: dict[str, SplitInfo] = {}
    for f in sorted(files, key=lambda f: f["path"]):
        out.setdefault(f["split"], SplitInfo()).files.append(ShardFile(f["path"], [int(n) for n in f["row_groups"]]))
    return out
