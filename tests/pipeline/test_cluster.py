"""The Spark jobs (the pipeline's four and image_urls) on a real standalone cluster (a master and two
workers on 127.0.0.1, each worker in its own folder, with a Python that has the executors' dependencies but not this
project), submitted with relative paths and the project's code shipped as a zip, from the driver
install alone (``pip install '.[pipeline]'``: no torch, Lightning or faiss): the same rows, and
shard files with the same bytes, as in local mode with the whole install. Tear-down leaves no
daemon behind."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
from helpers import ROOT
from helpers.spark_jobs import output_path, shard_digests
from helpers.yfcc import TOWNS, at, write_raw

from pipeline.cluster import _running, package, start_cluster, stop_cluster

WORKER_PYTHON = ROOT / ".venv-workers" / "bin" / "python"
DRIVER_BIN = ROOT / ".venv-pipeline" / "bin"      # make pipeline-env: pip install '.[pipeline]'
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


def driver_env(driver_bin: Path, **extra: str) -> dict[str, str]:
    """This environment with ``driver_bin`` first on PATH, no Python choice of its own for Spark, and
    no tracking URI (MLflow puts one there for child processes): each run folder keeps its own store."""
    dropped = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "PATH": f"{driver_bin}{os.pathsep}{env.get('PATH', '')}", "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def run_jobs(folder: Path, world: Path, spark_args: list[str], driver_bin: Path = Path(sys.executable).parent) -> None:
    """The jobs through ``driver_bin``'s spark-submit from ``folder``, every path relative to it,
    with ``driver_bin``'s Python as the driver's."""
    folder.mkdir()
    (folder / "raw").symlink_to(world)
    env = driver_env(driver_bin)
    for job in JOBS:
        proc = subprocess.run([str(driver_bin / "spark-submit"), *spark_args,
                               "--conf", f"spark.pyspark.driver.python={driver_bin / 'python'}",
                               str(ROOT / "jobs" / f"{job}.py"), *ARGS], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{job} on {spark_args[1]}:\n{proc.stderr[-3000:]}"


def rows(path: Path, run_folder: Path) -> list[dict]:
    """An output's rows, sorted, with the run's own folder (in rejects' ``file``) written as ``<run>``."""
    text = [json.dumps(r, sort_keys=True, default=str).replace(str(run_folder), "<run>")
            for r in pq.read_table(output_path(path)).to_pylist()]
    return sorted(text)


def test_the_driver_install_has_no_training_stack():
    """``pip install '.[pipeline]'`` gives the jobs' driver Spark, MLflow and Hydra, not the training stack."""
    if not (DRIVER_BIN / "python").exists():
        pytest.fail(f"{DRIVER_BIN / 'python'} is missing: make pipeline-env (make test builds it)")
    probe = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
             "['torch', 'torchvision', 'pytorch_lightning', 'lightning', 'faiss', 'pyspark', 'mlflow', 'hydra']}))")
    found = json.loads(subprocess.run([str(DRIVER_BIN / "python"), "-c", probe], capture_output=True, text=True,
                                      check=True).stdout)
    assert found == {"torch": False, "torchvision": False, "pytorch_lightning": False, "lightning": False,
                     "faiss": False, "pyspark": True, "mlflow": True, "hydra": True}


def test_the_jobs_on_a_standalone_cluster_match_local_mode(cluster, world, tmp_path):
    if not (DRIVER_BIN / "python").exists():
        pytest.fail(f"{DRIVER_BIN / 'python'} is missing: make pipeline-env (make test builds it)")
    code = package(tmp_path / "locsens-pipeline.zip")
    run_jobs(tmp_path / "local", world, ["--master", "local[2]", "--conf", f"spark.pyspark.python={sys.executable}"])
    run_jobs(tmp_path / "cluster", world, ["--master", cluster.master_url, "--py-files", str(code),
                                           "--conf", f"spark.pyspark.python={WORKER_PYTHON}"], driver_bin=DRIVER_BIN)
    local, remote = tmp_path / "local" / "data" / "work", tmp_path / "cluster" / "data" / "work"
    for output in ("clean", "clean_rejects", "dataset", "dataset_rejects", "vocab.parquet", "place_names.parquet",
                   "shard_rejects", "image_urls"):
        assert rows(remote / output, tmp_path / "cluster") == rows(local / output, tmp_path / "local"), output
    shards = shard_digests(local / "shards")
    assert len(shards) > 5 and shard_digests(remote / "shards") == shards
    assert pq.read_table(output_path(remote / "shard_rejects")).num_rows == 0      # every image found by the workers
    assert json.loads((output_path(remote / "baselines") / "baselines.json").read_text()) == \
        json.loads((output_path(local / "baselines") / "baselines.json").read_text())
    # On the cluster the shuffles were sized by spark.shuffle_partitions=auto: the input is tiny, so
    # two per core (2 workers x 1 core), not the local master's 8.
    for folder, expected in (("local", "8"), ("cluster", "4")):
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / folder}/mlruns.db")
        runs = mlflow.search_runs(experiment_names=[f"pipeline/{job}" for job in JOBS], output_format="list")
        assert len(runs) == len(JOBS), folder
        for run in runs:
            assert run.data.params["effective.spark.sql.shuffle.partitions"] == expected, (folder, run.info.run_name)
    # The executors really ran on the two workers, from their own folders.
    apps = [p for p in Path(cluster.state_dir).glob("worker*/work/app-*")]
    assert {p.parent.parent.name for p in apps} == {"worker1", "worker2"}


def test_a_job_with_only_its_script_and_the_archive_finds_its_settings_inside(tmp_path):
    """Where the driver has the job script and the code archive but no checkout (as in
    ``--deploy-mode cluster``), the job composes its settings from the archive's ``conf/``; without
    the archive it stops with one line saying what to ship."""
    code = package(tmp_path / "locsens-pipeline.zip")
    driver = tmp_path / "node" / "work"
    driver.mkdir(parents=True)
    shutil.copy(ROOT / "jobs" / "clean_metadata.py", driver / "clean_metadata.py")
    raw = write_raw(tmp_path / "raw", [at("nyc", 1, tags="cat,dog"), at("paris", 2, tags="eiffel")],
                    {1: TOWNS["nyc"], 2: TOWNS["paris"]})
    env = driver_env(DRIVER_BIN, PYSPARK_PYTHON=str(DRIVER_BIN / "python"))

    def submit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(DRIVER_BIN / "spark-submit"), "--master", "local[1]", *args, "clean_metadata.py",
                               f"paths.root_dir={tmp_path / 'out'}", f"paths.raw_dir={raw}"],
                              cwd=driver, env=env, capture_output=True, text=True, timeout=600)

    shipped = submit("--py-files", str(code))
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    # (spark-submit passes on the Python driver's stderr as its stdout)
    assert re.search(r"settings from conf inside \S*locsens-pipeline\.zip", shipped.stdout), shipped.stdout[-3000:]
    assert pq.read_table(output_path(tmp_path / "out" / "data" / "work" / "clean")).num_rows == 2
    alone = submit()
    assert alone.returncode == 2
    said = [line for line in alone.stdout.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and said[0].startswith("error: no conf/pipeline.yaml beside the job script"), alone.stdout
    assert "--py-files" in said[0]
