"""Shard writing at scale: one shard file per task, and a run killed with SIGKILL resumes.

The kill is real: shard_dataset runs under spark-submit in its own process group, which gets
SIGKILL once some shard files are finished. The rerun must skip those (they are verified, not
trusted) and publish exactly what an uninterrupted run publishes."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import ROOT
from helpers.faults import record
from helpers.spark_jobs import job_config, leftovers, output_path, shard_digests
from pyspark.sql import functions as F

from common import published
from common.contract import shard_root
from pipeline import shards

pytestmark = pytest.mark.spark
SETTINGS = ["vocab.drop_top=0", "vocab.size=2000", "shard.image_size=32", "shard.rows_per_file=16",
            "shard.rows_per_row_group=4"]


def test_every_task_writes_exactly_one_shard_file(spark):
    """Hashing N shard keys into N partitions left about a third of the tasks idle; spread() gives
    each partition exactly one file (so no task is more than one file above the mean)."""
    n_files = {"train": 23, "val": 5, "test": 4}
    df = spark.range(20_000).select(F.col("id").alias("photo_id"),
                                    F.element_at(F.array(*map(F.lit, ["train"] * 8 + ["val", "test"])),
                                                 (F.col("id") % 10 + 1).cast("int")).alias("split"))
    spread = shards.spread(spark, shards.assign_shards(df, n_files, seed=5), n_files)
    per_task = (spread.select("split", "shard", F.spark_partition_id().alias("task")).distinct()
                .groupBy("task").count().collect())
    assert spread.rdd.getNumPartitions() == sum(n_files.values())
    assert len(per_task) == sum(n_files.values()) and {r["count"] for r in per_task} == {1}
    order = spread.where((F.col("split") == "train") & (F.col("shard") == 3)).select("_order").collect()
    assert [r["_order"] for r in order] == sorted(r["_order"] for r in order)   # in file order


def _markers(out: Path) -> int:
    """Progress markers in the unpublished version(s) of the shard output ``out``."""
    return len(list(out.glob("v*/_progress/*/*.json")))


@pytest.mark.slow
@pytest.mark.faults
def test_a_killed_shard_run_resumes_to_the_uninterrupted_result(spark, tmp_path, synth_world):
    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata
    from jobs.shard_dataset import main as shard_dataset

    cfg = job_config(tmp_path, synth_world, *SETTINGS)
    clean_metadata(cfg)
    build_vocab(cfg)
    reference = job_config(tmp_path, synth_world, *SETTINGS, f"shard.output={tmp_path}/reference",
                           f"outputs.shard_rejects={tmp_path}/reference_rejects")
    shard_dataset(reference)

    args = [f"{k}={v}" for k, v in (("paths.root_dir", tmp_path), ("paths.raw_dir", synth_world),
                                    ("paths.mlflow_tracking_uri", f"sqlite:///{tmp_path}/mlruns.db"))] + SETTINGS
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    submit = ["spark-submit", "--master", "local[1]", str(ROOT / "jobs" / "shard_dataset.py"), *args]
    partial = Path(cfg.shard.output)

    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(submit, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while _markers(partial) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        log.close()
        pytest.fail(f"shard_dataset ended (rc {proc.returncode}) before it could be killed:\n"
                    f"{(tmp_path / 'killed.log').read_text()[-2000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    log.close()
    done_before = _markers(partial)
    assert done_before >= 10 and published.published_pointer(cfg.shard.output) is None

    # The Python driver's log reaches spark-submit's stdout.
    t0 = time.perf_counter()
    rerun = subprocess.run(submit, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=900)
    recovery = time.perf_counter() - t0
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    resumed = re.search(r"resumed: (\d+) of (\d+) shard files", rerun.stdout)
    assert resumed and int(resumed.group(1)) >= done_before, rerun.stdout[-2000:]
    assert int(resumed.group(1)) < int(resumed.group(2))

    out, ref = Path(cfg.shard.output), tmp_path / "reference"
    assert shard_digests(out) == shard_digests(ref)      # shard bytes; the manifest but for its MLflow run
    assert sorted(map(str, pq.read_table(output_path(cfg.outputs.shard_rejects)).to_pylist())) == \
        sorted(map(str, pq.read_table(output_path(tmp_path / "reference_rejects")).to_pylist()))
    assert leftovers(out.parent) == [] and not (shard_root(out) / "_progress").exists()
    record("shard_dataset killed mid-write", f"SIGKILL to spark-submit's process group after {done_before} of "
           f"{resumed.group(2)} shard files", f"rerun resumed {resumed.group(1)} verified files; shard bytes equal "
           "the uninterrupted run's", "0 rows", recovery)


def test_a_marker_is_trusted_only_while_its_file_matches(tmp_path):
    """Other inputs or settings (another digest), or a file changed since (size, row groups), mean
    the shard is written again; a marker's temp never stays behind."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    from pipeline.shard_progress import ShardProgress

    rel = "train/part-00000.parquet"
    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / rel, row_group_size=2)
    progress = ShardProgress(pafs.LocalFileSystem(), str(tmp_path))
    records = [{"kind": "file", "split": "train", "path": rel, "row_groups": [2, 1]}]
    progress.mark(rel, "digest-1", records, [2, 1])
    assert progress.completed(rel, "digest-1") == records
    assert progress.completed(rel, "digest-2") is None
    assert progress.completed("train/part-00001.parquet", "digest-1") is None     # no marker
    assert [p.name for p in tmp_path.rglob("*.inprogress")] == []
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / rel, row_group_size=3)  # rewritten since
    assert progress.completed(rel, "digest-1") is None
    (tmp_path / rel).write_bytes(b"PAR1 torn")
    assert progress.completed(rel, "digest-1") is None
