"""Reading inputs and publishing outputs through Hadoop's FileSystem API.

Paths may be local or any URI Spark reads (hdfs://, s3a://, ...), so existence checks and the
final rename go through the JVM's ``FileSystem`` rather than :mod:`os`. Outputs appear
atomically: a job writes into a hidden sibling temp directory and renames it into place only
when complete, so a killed job never leaves a half-written table for the next job to read.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Iterator, Sequence

from pyspark.sql import DataFrame, SparkSession

from pipeline.config import PipelineError

log = logging.getLogger(__name__)


def _fs_and_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, hpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs_and_path(spark, path)
    return bool(fs.exists(hpath))


def first_existing(spark: SparkSession, candidates: str | Sequence[str], setting: str) -> str:
    """The first candidate path that exists, or an error naming the setting and the paths tried."""
    paths = [candidates] if isinstance(candidates, str) else list(candidates)
    for p in paths:
        if p and exists(spark, p):
            return p
    raise PipelineError(f"setting {setting}: none of {paths} exists")


def require_input(spark: SparkSession, path: str, setting: str, produced_by: str | None = None) -> str:
    if not exists(spark, path):
        hint = f" (run {produced_by} first)" if produced_by else ""
        raise PipelineError(f"setting {setting}: input {path} does not exist{hint}")
    return path


def require_build_vocab_outputs(spark: SparkSession, outputs) -> None:
    """The dataset, vocabulary and place names that jobs after build_vocab read."""
    for key in ("dataset", "vocab", "place_names"):
        require_input(spark, outputs[key], f"outputs.{key}", "jobs/build_vocab.py")


def remove(spark: SparkSession, path: str) -> None:
    fs, hpath = _fs_and_path(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def _temp_sibling(path: str, tag: str) -> str:
    parent, _, name = path.rstrip("/").rpartition("/")
    return f"{parent}/.{name}.{tag}-{uuid.uuid4().hex[:12]}" if parent else f".{name}.{tag}-{uuid.uuid4().hex[:12]}"


def publish(spark: SparkSession, tmp: str, target: str) -> None:
    """Replace ``target`` by the finished ``tmp``: move the old one aside, rename, delete the old."""
    fs, htarget = _fs_and_path(spark, target)
    _, htmp = _fs_and_path(spark, tmp)
    parent = htarget.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    old = None
    if fs.exists(htarget):
        old = _fs_and_path(spark, _temp_sibling(target, "old"))[1]
        if not fs.rename(htarget, old):
            raise PipelineError(f"cannot move the previous output {target} aside")
    if not fs.rename(htmp, htarget):
        raise PipelineError(f"cannot rename {tmp} to {target}")
    if old is not None:
        fs.delete(old, True)


@contextlib.contextmanager
def atomic_output(spark: SparkSession, target: str) -> Iterator[str]:
    """Yield a temp path to write ``target`` into; publish it on success, delete it on failure."""
    tmp = _temp_sibling(target, "tmp")
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(Exception):
            remove(spark, tmp)
        raise
    publish(spark, tmp, target)
    log.info("wrote %s", target)


def write_parquet(spark: SparkSession, df: DataFrame, target: str, *, partitions: int | None = None,
                  sort_by: Sequence[str] = ()) -> None:
    """Write ``df`` as Parquet to ``target`` atomically, optionally coalesced and sorted.

    Sorting within partitions by a key makes reruns write the same rows in the same order.
    """
    if partitions is not None:
        df = df.repartition(partitions, *sort_by) if sort_by else df.coalesce(partitions)
    if sort_by:  # without `partitions`, the existing partitioning is kept (no shuffle)
        df = df.sortWithinPartitions(*sort_by)
    with atomic_output(spark, target) as tmp:
        df.write.mode("errorifexists").parquet(tmp)


def read_text_lines(spark: SparkSession, path: str) -> DataFrame:
    """Lines of a text file, a .bz2 file (split by Spark) or a folder of parts, as ``value``.

    Hadoop's line reader ends lines at LF, CR LF or CR and accepts a missing final newline.
    """
    return spark.read.option("wholetext", "false").text(path)


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write a small text file (stats, tables) atomically through Hadoop's FileSystem."""
    tmp = _temp_sibling(path, "tmp")
    fs, htmp = _fs_and_path(spark, tmp)
    fs.setWriteChecksum(False)  # no .crc side files next to small outputs on local disks
    out = fs.create(htmp, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    publish(spark, tmp, path)
