"""Reading inputs and publishing outputs through Hadoop's FileSystem API.

Paths may be local or any URI Spark reads (hdfs://, s3a://, ...), so existence checks and the
final renames go through the JVM's ``FileSystem`` rather than :mod:`os`. A job writes every
output into a hidden sibling temp (:class:`OutputSet`), checks what it wrote (counts read back
from the temps: input = kept + rejected), and only then renames all of them into place together.
A killed job or a failed check therefore leaves the previous outputs as they were and no
half-written or unchecked table for the next job to read.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession

from common import failpoints
from pipeline.config import PipelineError

log = logging.getLogger(__name__)


def _fs_and_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, hpath


def qualify(spark: SparkSession, path: str) -> str:
    """``path`` as Spark resolves it on the driver (Hadoop's default filesystem, the driver's
    working directory): a URI (``file:/abs/x``, ``hdfs://nn/x``) that executors open the same way.
    Paths handed to executor-side readers and writers go through here once, on the driver; a
    relative path would otherwise mean each worker's own folder."""
    fs, hpath = _fs_and_path(spark, path)
    uri = str(fs.makeQualified(hpath).toUri().toString())
    # A relative local path qualifies as file:/abs, an absolute one (and every listed file) as
    # file:///abs: one spelling, so that URIs compare equal.
    if uri.startswith("file:/") and not uri.startswith("file://"):
        uri = "file://" + uri[len("file:"):]
    return uri


def _file_statuses(spark: SparkSession, path: str, hidden: bool) -> Iterator:
    """Hadoop ``FileStatus`` of the data files of ``path``: itself, or the files below a folder,
    without hidden or ``_`` names unless ``hidden``."""
    fs, hpath = _fs_and_path(spark, path)
    status = fs.getFileStatus(hpath)
    if status.isFile():
        yield status
        return
    it = fs.listFiles(hpath, True)
    while it.hasNext():
        status = it.next()
        if status.isFile() and (hidden or not status.getPath().getName().startswith((".", "_"))):
            yield status


def list_files(spark: SparkSession, path: str, *, hidden: bool = False) -> list[str]:
    """The data files of ``path`` (:func:`_file_statuses`), sorted, as qualified URIs."""
    fs, hpath = _fs_and_path(spark, path)
    if fs.getFileStatus(hpath).isFile():
        return [qualify(spark, path)]
    return sorted(str(st.getPath().toUri().toString()) for st in _file_statuses(spark, path, hidden))


def head_lines(spark: SparkSession, uri: str, n: int) -> list[str]:
    """The first ``n`` lines of one text file (decompressed by Hadoop's codec for its suffix, e.g.
    .bz2), read on the driver: no Spark job per file, so checking a folder of thousands of parts
    takes seconds."""
    jvm = spark.sparkContext._jvm
    fs, hpath = _fs_and_path(spark, uri)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(
        spark.sparkContext._jsc.hadoopConfiguration()).getCodec(hpath)
    stream = fs.open(hpath)
    try:
        source = codec.createInputStream(stream) if codec is not None else stream
        reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(source, "UTF-8"))
        lines = []
        while len(lines) < n and (line := reader.readLine()) is not None:
            lines.append(line)
        return lines
    finally:
        stream.close()


#: How much larger than on disk a file's rows are to a shuffle: text compressed by a codec Hadoop
#: reads (bz2 and gzip expand about 4x on YFCC100M's lines), Parquet (columnar compression, ~2x).
EXPANSION = {".bz2": 4.0, ".gz": 4.0, ".xz": 4.0, ".zst": 4.0, ".parquet": 2.0}


def input_bytes(spark: SparkSession, paths: Sequence[str]) -> int:
    """The bytes the rows of ``paths`` (files or folders; missing ones count 0) take uncompressed,
    estimated from their sizes on disk (:data:`EXPANSION`): one listing on the driver, no read."""
    return int(sum(st.getLen() * EXPANSION.get(Path(st.getPath().getName()).suffix.lower(), 1.0)
                   for path in paths if exists(spark, path) for st in _file_statuses(spark, path, hidden=False)))


def hadoop_settings(spark: SparkSession, keys: Sequence[str]) -> dict[str, Optional[str]]:
    """Values of ``keys`` in the job's Hadoop configuration (``spark.hadoop.*`` settings land there)."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    return {k: conf.get(k) for k in keys}


def exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs_and_path(spark, path)
    return bool(fs.exists(hpath))


def single_existing(spark: SparkSession, candidates: str | Sequence[str], setting: str) -> str:
    """The one candidate path that exists.

    None existing, or several (``yfcc100m_dataset`` next to ``yfcc100m_dataset.bz2``, say: maybe
    a partial decompression, maybe another release), is an error naming the setting and the paths:
    reading whichever comes first could silently read the wrong file.
    """
    paths = [candidates] if isinstance(candidates, str) else list(candidates)
    found = [p for p in paths if p and exists(spark, p)]
    if not found:
        raise PipelineError(f"setting {setting}: none of {paths} exists")
    if len(found) > 1:
        raise PipelineError(f"setting {setting}: {' and '.join(found)} all exist; choose one with "
                            f"{setting}=<path> (e.g. {setting}={found[0]})")
    return found[0]


def require_input(spark: SparkSession, path: str, setting: str, produced_by: str | None = None) -> str:
    if not exists(spark, path):
        hint = f" (run {produced_by} first)" if produced_by else ""
        raise PipelineError(f"setting {setting}: input {path} does not exist{hint}")
    return path


#: The job that writes each of conf/pipeline.yaml's ``outputs``: a job that reads one names it when
#: it is missing.
PRODUCED_BY: dict[str, str] = {
    "clean": "clean_metadata", "clean_rejects": "clean_metadata", "place_names": "clean_metadata",
    "dataset": "build_vocab", "dataset_rejects": "build_vocab", "vocab": "build_vocab", "stats": "build_vocab",
    "shard_rejects": "shard_dataset", "image_urls": "image_urls", "baselines": "frequency_baselines",
}


def require_outputs(spark: SparkSession, outputs, *keys: str) -> None:
    """The earlier jobs' outputs (``outputs.<key>``) a job reads, which must exist."""
    for key in keys:
        require_input(spark, outputs[key], f"outputs.{key}", f"jobs/{PRODUCED_BY[key]}.py")


def remove(spark: SparkSession, path: str) -> None:
    fs, hpath = _fs_and_path(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def _temp_sibling(path: str, tag: str) -> str:
    parent, _, name = path.rstrip("/").rpartition("/")
    return f"{parent}/.{name}.{tag}-{uuid.uuid4().hex[:12]}" if parent else f".{name}.{tag}-{uuid.uuid4().hex[:12]}"


def recover_leftovers(spark: SparkSession, target: str) -> None:
    """Clean up after a run of the same job that was killed (SIGKILL, a lost machine): its temps
    (``.<name>.tmp-*``) are deleted, so they never pile up; a previous output it had moved aside
    (``.<name>.old-*``) goes back in place when the target is missing (killed mid-publish), else is
    deleted. Two runs writing the same output at once are not supported (the later one wins)."""
    parent, _, name = str(target).rstrip("/").rpartition("/")
    fs, htarget = _fs_and_path(spark, str(target))
    prefix = f"{parent}/.{name}" if parent else f".{name}"
    for tag in ("old", "tmp"):
        found = fs.globStatus(_fs_and_path(spark, f"{prefix}.{tag}-*")[1]) or []
        for status in sorted(found, key=lambda st: st.getModificationTime(), reverse=True):
            leftover = status.getPath()
            if tag == "old" and not fs.exists(htarget) and fs.rename(leftover, htarget):
                log.warning("restored %s from %s, moved aside by an interrupted run", target, leftover.getName())
                continue
            fs.delete(leftover, True)
            log.warning("removed %s, left by an interrupted run", leftover.getName())


def _rename(spark: SparkSession, src: str, dst: str) -> bool:
    """Hadoop's rename; False where it fails, whether it says so or throws (e.g. a missing ``src``)."""
    fs, hsrc = _fs_and_path(spark, src)
    try:
        return bool(fs.rename(hsrc, _fs_and_path(spark, dst)[1]))
    except Py4JJavaError as exc:
        log.error("cannot rename %s to %s: %s", src, dst, exc.java_exception)
        return False


class OutputSet:
    """The outputs of one job, staged in hidden temp siblings and published together.

    ``stage(target)`` gives the temp path to write ``target`` into; the ``write_*`` helpers
    write there and ``read_parquet`` reads it back, so the job counts what it actually wrote.
    Nothing appears at a target until :meth:`publish`; use it through :func:`staged_outputs`,
    which publishes on success and deletes every temp on any exception.
    """

    def __init__(self, spark: SparkSession):
        self.spark = spark
        self.temps: dict[str, str] = {}   # target -> temp, in staging order
        self.resumable: set[str] = set()

    def stage(self, target: str, *, resumable: bool = False) -> str:
        """The temp to write ``target`` into. A resumable temp has a fixed name
        (``.<name>.partial``) and survives a failed run, so the next run can carry on from it;
        the writer must then check what it finds there (:mod:`pipeline.shard_progress`)."""
        target = str(target)
        if target in self.temps:
            raise ValueError(f"output {target} is staged twice")
        recover_leftovers(self.spark, target)
        if resumable:
            parent, _, name = target.rstrip("/").rpartition("/")
            self.temps[target] = f"{parent}/.{name}.partial" if parent else f".{name}.partial"
            self.resumable.add(target)
        else:
            self.temps[target] = _temp_sibling(target, "tmp")
        return self.temps[target]

    def temp(self, target: str) -> str:
        return self.temps[str(target)]

    def write_parquet(self, df: DataFrame, target: str, *, partitions: int | None = None,
                      sort_by: Sequence[str] = ()) -> str:
        """Write ``df`` as Parquet for ``target``, optionally coalesced and sorted; returns the temp.

        Sorting within partitions by a key makes reruns write the same rows in the same order.
        """
        if partitions is not None:
            df = df.repartition(partitions, *sort_by) if sort_by else df.coalesce(partitions)
        if sort_by:  # without `partitions`, the existing partitioning is kept (no shuffle)
            df = df.sortWithinPartitions(*sort_by)
        tmp = self.stage(target)
        df.write.mode("errorifexists").parquet(tmp)
        return tmp

    def read_parquet(self, target: str) -> DataFrame:
        return self.spark.read.parquet(self.temp(target))

    def write_texts(self, target: str, files: dict[str, str]) -> str:
        """Small text files (tables, stats) that make up the folder ``target``, published together:
        its temp is a sibling of the folder, never a hidden file inside the published one."""
        tmp = self.stage(target)
        for name, text in files.items():
            _write_text_file(self.spark, f"{tmp}/{name}", text)
        return tmp

    def write_text(self, target: str, text: str) -> str:
        """Write a small text file (stats, tables) for ``target``; returns the temp."""
        tmp = self.stage(target)
        _write_text_file(self.spark, tmp, text)
        return tmp

    def publish(self) -> None:
        """Rename every temp onto its target, replacing the previous outputs.

        All previous outputs are first moved aside, then all temps renamed into place, then the
        old ones deleted. If a rename fails, the renames done so far are undone (new outputs back
        to their temps, old ones back in place) before the error is raised.
        """
        failpoints.reach("publish")
        aside: list[tuple[str, str]] = []    # (target, old)
        placed: list[tuple[str, str]] = []   # (target, temp)
        try:
            for target in self.temps:
                fs, htarget = _fs_and_path(self.spark, target)
                parent = htarget.getParent()
                if parent is not None and not fs.exists(parent):
                    fs.mkdirs(parent)
                if fs.exists(htarget):
                    old = _temp_sibling(target, "old")
                    if not _rename(self.spark, target, old):
                        raise PipelineError(f"cannot move the previous output {target} aside")
                    aside.append((target, old))
            for target, tmp in self.temps.items():
                if not _rename(self.spark, tmp, target):
                    raise PipelineError(f"cannot rename {tmp} to {target}")
                placed.append((target, tmp))
        except BaseException:
            for target, tmp in reversed(placed):
                with contextlib.suppress(Exception):
                    _rename(self.spark, target, tmp)
            for target, old in reversed(aside):
                with contextlib.suppress(Exception):
                    if not _rename(self.spark, old, target):
                        log.error("could not restore the previous output %s (it is at %s)", target, old)
            raise
        for _, old in aside:
            remove(self.spark, old)
        for target in self.temps:
            log.info("wrote %s", target)
        self.temps = {}

    def discard(self, *, resumable: bool = False) -> None:
        """Delete every temp (best effort: a cleanup failure must not hide the original error);
        resumable temps are kept for the next run unless ``resumable`` is true."""
        for target, tmp in self.temps.items():
            if target in self.resumable and not resumable:
                log.warning("kept the partial output %s: a rerun with the same inputs and settings carries on "
                            "from it", tmp)
                continue
            with contextlib.suppress(Exception):
                remove(self.spark, tmp)
        self.temps = {}


@contextlib.contextmanager
def staged_outputs(spark: SparkSession) -> Iterator[OutputSet]:
    """An :class:`OutputSet` published when the block ends normally, discarded on any exception.

    Run the job's checks inside the block: a failed check then publishes nothing.
    """
    outputs = OutputSet(spark)
    try:
        yield outputs
        outputs.publish()
    except BaseException:
        outputs.discard()
        raise


@contextlib.contextmanager
def atomic_output(spark: SparkSession, target: str) -> Iterator[str]:
    """Yield a temp path to write ``target`` into; publish it on success, delete it on failure."""
    with staged_outputs(spark) as outputs:
        yield outputs.stage(target)


def write_parquet(spark: SparkSession, df: DataFrame, target: str, *, partitions: int | None = None,
                  sort_by: Sequence[str] = ()) -> None:
    """Write and publish one Parquet output on its own (see :meth:`OutputSet.write_parquet`)."""
    with staged_outputs(spark) as outputs:
        outputs.write_parquet(df, target, partitions=partitions, sort_by=sort_by)


def read_text_lines(spark: SparkSession, path: str) -> DataFrame:
    """Lines of a text file, a .bz2 file (split by Spark) or a folder of parts, as ``value``.

    Hadoop's line reader ends lines at LF, CR LF or CR and accepts a missing final newline.
    """
    return spark.read.option("wholetext", "false").text(path)


def _write_text_file(spark: SparkSession, path: str, text: str) -> None:
    fs, hpath = _fs_and_path(spark, path)
    fs.setWriteChecksum(False)  # no .crc side files next to small outputs on local disks
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write and publish one small text file on its own (see :meth:`OutputSet.write_text`)."""
    with staged_outputs(spark) as outputs:
        outputs.write_text(path, text)
