"""The Spark jobs (the pipeline's four and image_urls) on a real standalone cluster (a master and two
workers on 127.0.0.1, each worker in its own folder, with a Python that has the executors' dependencies but not this
project), submitted with relative paths and the project's code shipped as a zip: the same rows,
and shard files with the same bytes, as in local mode. Tear-down leaves no daemon behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import ROOT
from helpers.spark_jobs import shard_digests

from pipeline.cluster import _running, package, start_cluster, stop_cluster

WORKER_PYTHON = ROOT / ".venv-workers" / "bin" / "python"
JOBS = ["clean_metadata", "build_vocab", "image_urls", "shard_dataset", "frequency_baselines"]
ARGS = ["paths.root_dir=.", "paths.raw_dir=raw", "shard.image_size=64", "shard.rows_per_file=100",
        "shard.rows_per_row_group=25"]

pytestmark = [pytest.mark.slow, pytest.mark.spark]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not WORKER_PYTHON.exists():
        pytest.fail(f"{WORKER_PYTHON} is missing: make worker-env (make test builds it)")
    state = tmp_path_factory.mktemp("cluster")
    cluster = start_cluster(state, workers=2, worker_python=str(WORKER_PYTHON))
    yield cluster
    stop_cluster(state)
    assert not any(_running(pid) for pid in cluster.pids), "a cluster daemon survived tear-down"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cluster_world")
    subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(out), "--photos", "400", "--seed", "3"],
                   check=True, capture_output=True, cwd=ROOT)
    return out


def run_jobs(folder: Path, world: Path, spark_args: list[str]) -> None:
    """The jobs through spark-submit from ``folder``, every path relative to it."""
    folder.mkdir()
    (folder / "raw").symlink_to(world)
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", SPARK_LOCAL_IP="127.0.0.1")
    for job in JOBS:
        proc = subprocess.run(["spark-submit", *spark_args, "--conf", f"spark.pyspark.driver.python={sys.executable}",
                               str(ROOT / "jobs" / f"{job}.py"), *ARGS], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{job} on {spark_args[1]}:\n{proc.stderr[-3000:]}"


def rows(path: Path, run_folder: Path) -> list[dict]:
    """An output's rows, sorted, with the run's own folder (in rejects' ``file``) written as ``<run>``."""
    text = [json.dumps(r, sort_keys=True, default=str).replace(str(run_folder), "<run>")
            for r in pq.read_table(path).to_pylist()]
    return sorted(text)


def test_the_jobs_on_a_standalone_cluster_match_local_mode(cluster, world, tmp_path):
    code = package(tmp_path / "locsens-pipeline.zip")
    run_jobs(tmp_path / "local", world, ["--master", "local[2]", "--conf", f"spark.pyspark.python={sys.executable}"])
    run_jobs(tmp_path / "cluster", world, ["--master", cluster.master_url, "--py-files", str(code),
                                           "--conf", f"spark.pyspark.python={WORKER_PYTHON}"])
    local, remote = tmp_path / "local" / "data" / "work", tmp_path / "cluster" / "data" / "work"
    for output in ("clean", "clean_rejects", "dataset", "dataset_rejects", "vocab.parquet", "place_names.parquet",
                   "shard_rejects", "image_urls"):
        assert rows(remote / output, tmp_path / "cluster") == rows(local / output, tmp_path / "local"), output
    shards = shard_digests(local / "shards")
    assert len(shards) > 5 and shard_digests(remote / "shards") == shards
    assert pq.read_table(remote / "shard_rejects").num_rows == 0      # every image found by the workers
    assert json.loads((remote / "baselines" / "baselines.json").read_text()) == \
        json.loads((local / "baselines" / "baselines.json").read_text())
    # The executors really ran on the two workers, from their own folders.
    apps = [p for p in Path(cluster.state_dir).glob("worker*/work/app-*")]
    assert {p.parent.parent.name for p in apps} == {"worker1", "worker2"}
