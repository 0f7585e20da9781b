"""shard_dataset transforms: assign rows to shard files, spread the files over tasks, write each.

The split's rows are spread over ``ceil(rows / rows_per_file)`` files by a seeded hash of
photo_id and ordered inside each file by another, so rows are in random (but reproducible)
order within a split. Only narrow metadata is shuffled, into exactly one shard file per partition
(:func:`spread`); each task then reads its rows' images (a multimedia-commons tree, or img2dataset's
Parquet files located by :mod:`pipeline.img2dataset`) with ``read_threads`` reads and resizes in
flight (:mod:`pipeline.images`), and writes its file with pyarrow, in exactly
:data:`common.contract.SHARD_SCHEMA` and with row groups of exactly ``rows_per_row_group`` rows
(the last one shorter). A finished file is recorded (:mod:`pipeline.shard_progress`) so a rerun
after a kill skips it. The writer emits one record per file and per rejected row, from which the
job builds the manifest and the rejects table.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.contract import SHARD_SCHEMA, ShardFile, SplitInfo
from pipeline import images
from pipeline.shard_progress import ShardProgress, digest

RECORD_SCHEMA = ("kind string, split string, path string, row_groups array<bigint>, photo_id bigint, reason string, "
                 "sources int, resumed boolean")
_RECORD_ARROW = pa.schema([("kind", pa.string()), ("split", pa.string()), ("path", pa.string()),
                           ("row_groups", pa.list_(pa.int64())), ("photo_id", pa.int64()), ("reason", pa.string()),
                           ("sources", pa.int32()), ("resumed", pa.bool_())])
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


def shard_numbers(n_files: dict[str, int]) -> F.Column:
    """The global number of a row's shard file: the splits' files numbered one after the other,
    splits in name order (so the number of ``(split, shard)`` is the same in every job)."""
    number, offset = None, 0
    for split in sorted(n_files):
        expr = F.lit(offset) + F.col("shard")
        number = F.when(F.col("split") == split, expr) if number is None else number.when(F.col("split") == split, expr)
        offset += n_files[split]
    return number.cast("int")


def spread(spark: SparkSession, df: DataFrame, n_files: dict[str, int]) -> DataFrame:
    """``df`` (with ``shard`` and ``_order``) in ``sum(n_files)`` partitions, partition g holding
    exactly shard file g (:func:`shard_numbers`), rows in ``_order``.

    Hashing the shard key into as many partitions leaves about a third of them empty and gives
    others several files. Spark's hash partitioning sends a row to ``pmod(hash(key), n)`` with the
    same Murmur3 as :func:`pyspark.sql.functions.hash`, so each shard gets as key the smallest
    integer that hashes to its own number (a small table found with Spark, broadcast), and every
    task then writes one file.
    """
    total = sum(n_files.values())
    candidates = spark.range(64 * total).select(F.pmod(F.hash("id"), F.lit(total)).alias("_g"), F.col("id"))
    keys = candidates.groupBy("_g").agg(F.min("id").alias("_spread_key"))
    if keys.count() != total:   # 64 tries per shard: practically never short
        raise RuntimeError(f"no partition key found for some of {total} shard files")
    numbered = df.withColumn("_g", shard_numbers(n_files)).join(F.broadcast(keys), "_g")
    return (numbered.repartition(total, "_spread_key").drop("_spread_key", "_g")
            .sortWithinPartitions("split", "shard", "_order"))


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """What the writer needs besides the rows. The last four (a task's threads and memory, and how
    to reach an S3 store) do not change the files' bytes: they are left out of :meth:`fingerprint`."""

    out_dir: str                  # qualified URI of the staging folder
    image_source: str             # mmcommons | img2dataset
    image_root: Optional[str]     # qualified URI of the image tree (mmcommons)
    short_side: int
    quality: int
    rows_per_group: int
    read_threads: int = 8         # images read at once (I/O: hides remote storage's latency)
    decode_threads: int = 0       # threads decoding and resizing; 0: the task's cores (spark.task.cpus)
    images_in_flight: int = 64    # source images a task holds at once
    # The job's s3a settings (pipeline.images.s3_options), credentials among them: not shown.
    s3: images.S3Options = dataclasses.field(default=(), repr=False)

    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        for k in ("out_dir", "read_threads", "decode_threads", "images_in_flight", "s3"):
            fields.pop(k)
        return json.dumps(fields, sort_keys=True)

    def decoders(self, task_cpus: Optional[int]) -> int:
        """Threads that decode and resize in a task given ``task_cpus`` cores (None: outside Spark, 1):
        more would compete with the other tasks of the executor for cores Spark did not give it."""
        return self.decode_threads or max(1, task_cpus or 1)


class _FileWriter:
    """One shard file being written in place (never moved: on object stores a move is a copy),
    buffered rows flushed as whole row groups. Until its progress marker is written after
    :meth:`close`, a file there is not taken as done: a killed task's file is written again."""

    def __init__(self, fs, base: str, split: str, shard: int, rows_per_group: int):
        self.fs, self.rel = fs, shard_path(split, shard)
        self.final = f"{base}/{self.rel}"
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
            # JPEGs neither compress nor repeat: stored plain, they are read back at half the cost of
            # a dictionary page's (bench/loader_throughput.py's loader reads them every batch).
            compression = {name: ("NONE" if name == "image" else "ZSTD") for name in SHARD_SCHEMA.names}
            dictionary = [name for name in SHARD_SCHEMA.names if name != "image"]
            # Non-compliant nested names keep list<item> so the files read back as SHARD_SCHEMA exactly.
            self.writer = pq.ParquetWriter(self.final, SHARD_SCHEMA, filesystem=self.fs, compression=compression,
                                           use_dictionary=dictionary, use_compliant_nested_type=False)
        self.writer.write_table(table, row_group_size=n)
        self.groups.append(n)
        self.rows = {name: [] for name in SHARD_SCHEMA.names}

    def close(self) -> Optional[dict]:
        self._flush()
        if self.writer is None:
            return None
        self.writer.close()
        return {"kind": "file", "split": self.split, "path": self.rel, "row_groups": self.groups,
                "photo_id": None, "reason": None}


def _fetch(rows: list[dict], settings: ShardSettings, pool: Executor) -> list[bytes | images.ImageError]:
    """The source bytes of ``rows``' images (or why there are none), read ``read_threads`` at a time."""
    if settings.image_source == "img2dataset":
        return images.read_img2dataset([(r["i2d_file"], r["i2d_row"], r["i2d_status"]) for r in rows], pool,
                                       settings.s3)
    root = settings.image_root
    return list(pool.map(lambda r: images.read_under(root, r["image_path"], settings.s3), rows))


def _locator(row: dict, source: str) -> Optional[str]:
    """Where a rejected row's image was looked for: its path in the tree, or its download URL."""
    return row.get("image_path") if source == "mmcommons" else row.get("download_url")


def _write_shard(split: str, shard: int, rows: list[dict], settings: ShardSettings, fs, base: str,
                 progress: ShardProgress, pool: Executor, decoders: Executor) -> Iterator[dict]:
    """Write (or, when already complete and verified, skip) one shard file; its records."""
    rel = shard_path(split, shard)
    want = digest(settings.fingerprint(), rows)
    done = progress.completed(rel, want)
    if done is not None:
        yield from ({**r, "resumed": True} for r in done)
        return
    writer = _FileWriter(fs, base, split, shard, settings.rows_per_group)
    records: list[dict] = []
    window = max(1, settings.images_in_flight)   # bounds the source images held in memory
    for start in range(0, len(rows), window):
        chunk = rows[start:start + window]
        sources = _fetch(chunk, settings, pool)
        for row, image in zip(chunk, decoders.map(lambda s: images.resized(s, settings.short_side,
                                                                           settings.quality), sources)):
            if isinstance(image, images.ImageError):
                records.append({"kind": "reject", "split": split, "path": _locator(row, settings.image_source),
                                "row_groups": None, "photo_id": row["photo_id"], "reason": image.reason})
            else:
                writer.add({**{k: row[k] for k in METADATA_COLUMNS}, "image": image})
    file = writer.close()
    if file is not None:
        if settings.image_source == "img2dataset":   # how many img2dataset files this shard read
            file["sources"] = len({r["i2d_file"] for r in rows if r["i2d_file"] is not None})
        records.insert(0, file)
    progress.mark(rel, want, records, file["row_groups"] if file else [])
    yield from ({**r, "resumed": False} for r in records)


def shard_writer(settings: ShardSettings) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: one partition of :func:`spread` in, its records out."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = list(batches)   # narrow metadata only: a shard's rows, without image bytes
        if not batches:
            return
        rows = pa.Table.from_batches(batches).to_pylist()
        ctx = TaskContext.get()
        fs, base = images.filesystem(settings.out_dir, settings.s3)
        progress = ShardProgress(fs, base)
        threads = settings.decoders(ctx.cpus() if ctx else None)
        with ThreadPoolExecutor(max_workers=settings.read_threads) as pool, \
                ThreadPoolExecutor(max_workers=threads) as decoders:
            # Rows come sorted by (split, shard): one run per shard file (one run, after spread()).
            for (split, shard), run in itertools.groupby(rows, key=lambda r: (r["split"], r["shard"])):
                records = list(_write_shard(split, shard, list(run), settings, fs, base, progress, pool, decoders))
                yield pa.RecordBatch.from_pylist(records, schema=_RECORD_ARROW)

    return write


def write_shards(spark: SparkSession, df: DataFrame, n_files: dict[str, int], settings: ShardSettings) -> DataFrame:
    """Records (files written or resumed, rows rejected) of writing ``df`` (with ``shard``, ``_order``)."""
    return spread(spark, df, n_files).mapInArrow(shard_writer(settings), RECORD_SCHEMA)


def splits_from_records(files: list[dict]) -> dict[str, SplitInfo]:
    """Manifest splits from the writer's file records, files in path order."""
    out: dict[str, SplitInfo] = {}
    for f in sorted(files, key=lambda f: f["path"]):
        out.setdefault(f["split"], SplitInfo()).files.append(ShardFile(f["path"], [int(n) for n in f["row_groups"]]))
    return out
