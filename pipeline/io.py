"""Reading inputs and publishing outputs through Hadoop's FileSystem API.

Paths may be local or any URI Spark reads (hdfs://, s3a://, ...), so existence checks and the
final writes go through the JVM's ``FileSystem`` rather than :mod:`os`. A job writes every
output into a new version folder of its own (:class:`OutputSet`), checks what it wrote (counts
read back from them: input = kept + rejected), and only then publishes all of them, each by
writing one small pointer file (:mod:`common.published`); nothing is renamed, which on object
stores would mean copying. A killed job or a failed check therefore leaves the previous outputs
as they were, and readers (:func:`require_outputs`) never see a half-written or unchecked table.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession

from common import failpoints, published
from common.tracking import first_line
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


def require_outputs(spark: SparkSession, outputs, *keys: str) -> dict[str, str]:
    """The published versions of the earlier jobs' outputs (``outputs.<key>``) a job reads, by key.

    A missing output names the job to run. Outputs of one job must come from one run of it: a run
    killed while publishing its pointers leaves some outputs of the new run and some of the one
    before, each complete, but not to be read together."""
    found: dict[str, published.Pointer] = {}
    for key in keys:
        target = str(outputs[key]).rstrip("/")
        pointer = published_version(spark, target)
        if pointer is None:
            what = "does not exist" if not exists(spark, target) else "has no published version"
            raise PipelineError(f"setting outputs.{key}: input {target} {what} "
                                f"(run jobs/{PRODUCED_BY[key]}.py first)")
        found[key] = pointer
    for key, pointer in found.items():
        for other, theirs in found.items():
            if PRODUCED_BY[key] == PRODUCED_BY[other] and pointer.run != theirs.run and key < other:
                raise PipelineError(
                    f"outputs.{key} ({pointer.version}) and outputs.{other} ({theirs.version}) come from different "
                    f"runs of jobs/{PRODUCED_BY[key]}.py (one was stopped while publishing): run it again")
    return {key: f"{str(outputs[key]).rstrip('/')}/{pointer.version}" for key, pointer in found.items()}


def remove(spark: SparkSession, path: str) -> None:
    fs, hpath = _fs_and_path(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def _names(spark: SparkSession, folder: str) -> list[str]:
    """The entries of ``folder`` (none when it is missing): one listing, no recursion."""
    fs, hpath = _fs_and_path(spark, folder)
    if not fs.exists(hpath):
        return []
    return [str(st.getPath().getName()) for st in fs.listStatus(hpath)]


def _read_bytes(spark: SparkSession, path: str) -> bytes:
    fs, hpath = _fs_and_path(spark, path)
    stream = fs.open(hpath)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def _pointer(spark: SparkSession, target: str, names: Sequence[str]) -> Optional[published.Pointer]:
    def read(name: str) -> bytes:
        try:
            return _read_bytes(spark, f"{target}/{name}")
        except Py4JJavaError:
            return b""
    return published.choose(names, read)


def published_version(spark: SparkSession, target: str) -> Optional[published.Pointer]:
    """The published pointer of output ``target`` (:mod:`common.published`), or None."""
    target = str(target).rstrip("/")
    return _pointer(spark, target, _names(spark, target))


def recover_leftovers(spark: SparkSession, target: str, keep: Sequence[str] = (), *,
                      superseded: bool = False) -> Optional[published.Pointer]:
    """Delete what earlier runs left in output ``target``: superseded pointers and versions, and
    the versions of runs killed before they published (except ``keep``, one being resumed).
    The published version is never deleted. Returns the published pointer. ``superseded``: called
    right after publishing, where what goes is the version just replaced (logged as such)."""
    target = str(target).rstrip("/")
    names = _names(spark, target)
    pointer = _pointer(spark, target, names)
    for name in published.leftovers(names, pointer, keep):
        remove(spark, f"{target}/{name}")
        if published.is_version(name):
            log.log(logging.INFO if superseded else logging.WARNING, "removed %s/%s, %s", target, name,
                    "the version it replaced" if superseded else "left unpublished by an interrupted run")
    return pointer


class OutputSet:
    """The outputs of one job run, each written to a new version folder and published together.

    ``stage(target)`` gives the version folder to write ``target`` into; the ``write_*`` helpers
    write there and ``read_parquet`` reads it back, so the job counts what it actually wrote.
    Readers see nothing of it until :meth:`publish` writes each target's pointer; nothing is
    renamed (:mod:`common.published`). Use it through :func:`staged_outputs`, which publishes on
    success and deletes the unpublished versions on any exception.
    """

    def __init__(self, spark: SparkSession):
        self.spark = spark
        self.version = published.new_version()
        self.temps: dict[str, str] = {}   # target -> its version folder, in staging order
        self.resumable: set[str] = set()

    def stage(self, target: str, *, resumable: bool = False) -> str:
        """The version folder to write ``target`` into. A resumable one survives a failed run, and
        the next run writes into it again (the newest unpublished version of ``target``), so it can
        carry on from what it finds there; the writer must check that (:mod:`pipeline.shard_progress`)."""
        target = str(target).rstrip("/")
        if target in self.temps:
            raise ValueError(f"output {target} is staged twice")
        version = self.version
        if resumable:
            names = _names(self.spark, target)
            unpublished = published.unpublished_versions(names, _pointer(self.spark, target, names))
            if unpublished:
                version = unpublished[0]
                log.info("carrying on in %s/%s, left unpublished by an earlier run", target, version)
            self.resumable.add(target)
        recover_leftovers(self.spark, target, keep=[version])
        self.temps[target] = f"{target}/{version}"
        return self.temps[target]

    def temp(self, target: str) -> str:
        return self.temps[str(target).rstrip("/")]

    def write_parquet(self, df: DataFrame, target: str, *, partitions: int | None = None,
                      sort_by: Sequence[str] = (), distinct_columns: Sequence[str] = ()) -> str:
        """Write ``df`` as Parquet for ``target``, optionally coalesced and sorted; returns the version folder.

        Sorting within partitions by a key makes reruns write the same rows in the same order.
        ``distinct_columns`` (ids, hashes, URLs, coordinates) are written without a dictionary:
        Parquet would build one for each and give it up once it outgrew its page, for nothing
        (the clean table at 2M rows: 4.5 s -> 4.0 s to write, the same bytes).
        """
        if partitions is not None:
            df = df.repartition(partitions, *sort_by) if sort_by else df.coalesce(partitions)
        if sort_by:  # without `partitions`, the existing partitioning is kept (no shuffle)
            df = df.sortWithinPartitions(*sort_by)
        tmp = self.stage(target)
        writer = df.write.mode("errorifexists")
        for column in distinct_columns:
            writer = writer.option(f"parquet.enable.dictionary#{column}", "false")
        writer.parquet(tmp)
        return tmp

    def read_parquet(self, target: str) -> DataFrame:
        return self.spark.read.parquet(self.temp(target))

    def write_texts(self, target: str, files: dict[str, str]) -> str:
        """Small text files (tables, stats) that make up the folder ``target``, published together."""
        tmp = self.stage(target)
        for name, text in files.items():
            write_text_file(self.spark, f"{tmp}/{name}", text)
        return tmp

    def publish(self) -> None:
        """Publish every staged version: one new pointer per target, then the superseded ones go.

        Each pointer is created, never overwritten, under the next free number; a kill between two
        targets leaves each of them a complete, checked version, and :func:`require_outputs` tells
        a reader that they come from different runs.
        """
        failpoints.reach("publish")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        job = self.spark.sparkContext.appName
        for target, tmp in list(self.temps.items()):
            version = tmp.rsplit("/", 1)[1]
            pointer = published.Pointer(published.next_seq(_names(self.spark, target)), version,
                                        run=published.run_of(self.version), job=job, published=stamp)
            path = f"{target}/{published.pointer_name(pointer.seq)}"
            try:
                write_text_file(self.spark, path, pointer.to_json(), overwrite=False)
            except Py4JJavaError as exc:
                raise PipelineError(f"cannot publish {target}: writing {path} failed "
                                    f"({first_line(exc.java_exception)}); is another run writing it?") from None
            del self.temps[target]              # published: no longer this run's to discard
            recover_leftovers(self.spark, target, superseded=True)
            log.info("published %s (%s)", target, version)

    def discard(self, *, resumable: bool = False) -> None:
        """Delete every unpublished version (best effort: a cleanup failure must not hide the
        original error); resumable ones are kept for the next run unless ``resumable`` is true."""
        for target, tmp in self.temps.items():
            if target in self.resumable and not resumable:
                log.warning("kept the unpublished %s: a rerun with the same inputs and settings carries on "
                            "from it", tmp)
                continue
            with contextlib.suppress(Exception):
                remove(self.spark, tmp)
                if not _names(self.spark, target):     # made by this run for nothing
                    remove(self.spark, target)
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


def write_text_file(spark: SparkSession, path: str, text: str, *, overwrite: bool = True) -> None:
    """Write one small text file in place (one create: a PUT on object stores). Without
    ``overwrite`` the create fails when the file exists."""
    fs, hpath = _fs_and_path(spark, path)
    fs.setWriteChecksum(False)  # no .crc side files next to small outputs on local disks
    out = fs.create(hpath, overwrite)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
