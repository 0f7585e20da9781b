"""``make tracking-server``: PostgreSQL and ``mlflow server`` started by the project, with several
writers at once: a LocSens training launched as two torchrun "nodes", another training in one
process, and a Spark job, all logging to the server while the others do. Each training makes one
run (not one per rank), every run finishes, artifacts reach the server's artifact root, and
stopping leaves no server process behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import mlflow
import pytest
from helpers import ROOT
from helpers.config import CPU, TINY_LOCSENS
from helpers.embeddings import write_embeddings
from helpers.faults import spark_env
from helpers.servers import free_port

from common import tracking, tracking_server

LOCSENS = ["+experiment=locsens_raw", *TINY_LOCSENS, *CPU, "trainer.max_epochs=2", "torch_threads=1",
           "data.batch_size=40"]


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture
def state_dir():
    """A folder PostgreSQL's user can enter (pytest's own are private to root, who may not run it)."""
    folder = Path(tempfile.mkdtemp(prefix="locsens-tracking-"))
    folder.chmod(0o711)
    yield folder / "tracking"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_several_writers_log_to_one_postgresql_tracking_server(tmp_path, synth_world, state_dir):
    server = tracking_server.start(state_dir, port=free_port(), pg_port=free_port())
    try:
        env = {**spark_env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "MLFLOW_TRACKING_URI": server.uri,
               "MASTER_ADDR": "127.0.0.1"}
        emb = write_embeddings(tmp_path / "emb")
        common = [*LOCSENS, f"paths.root_dir={tmp_path}", f"data.embeddings_dir={emb}", "trainer=ddp",
                  "trainer.accelerator=cpu"]
        port, procs, logs = str(free_port()), [], []
        for node in (0, 1):          # LocSens on two torchrun "nodes" of one process
            logs.append(open(tmp_path / f"node{node}.log", "w"))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                 f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "training.run",
                 *common, "task_name=two_nodes"], cwd=ROOT, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        logs.append(open(tmp_path / "single.log", "w"))
        procs.append(subprocess.Popen([sys.executable, "-m", "training.run", *LOCSENS, f"paths.root_dir={tmp_path}",
                                       f"data.embeddings_dir={emb}", "task_name=one_process"], cwd=ROOT, env=env,
                                      stdout=logs[-1], stderr=subprocess.STDOUT))
        logs.append(open(tmp_path / "spark.log", "w"))
        procs.append(subprocess.Popen(
            ["spark-submit", "--master", "local[1]", str(ROOT / "jobs" / "clean_metadata.py"),
             f"paths.root_dir={tmp_path}", f"paths.raw_dir={synth_world}", "spark.shuffle_partitions=2"],
            cwd=ROOT, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=900) for p in procs]
        for f in logs:
            f.close()
        assert codes == [0, 0, 0, 0], "\n".join(Path(f.name).read_text()[-2000:] for f in logs)

        client = mlflow.MlflowClient(server.uri)
        train = client.get_experiment_by_name("train")
        runs = client.search_runs([train.experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["one_process", "two_nodes"]   # one run per training
        assert all(r.info.status == "FINISHED" for r in runs)
        two = next(r for r in runs if r.info.run_name == "two_nodes")
        assert two.data.params["topology/world_size"] == "2" and "val/loss" in two.data.metrics
        assert "config.yaml" in [a.path for a in client.list_artifacts(two.info.run_id)]
        assert any((Path(server.artifacts)).rglob("config.yaml"))                  # in the server's artifact root
        evaluated = client.search_runs([client.get_experiment_by_name("evaluate").experiment_id])
        assert len(evaluated) >= 2 and all(r.info.status == "FINISHED" for r in evaluated)
        job = client.search_runs([client.get_experiment_by_name("pipeline/clean_metadata").experiment_id])
        assert len(job) == 1 and job[0].info.status == "FINISHED"
        assert server.backend.startswith("postgresql") and os.listdir(server.pg_data)
    finally:
        pid = server.mlflow_pid
        assert tracking_server.stop(state_dir)
    assert not _alive(pid)
    assert not tracking_server.stop(state_dir)       # nothing left to stop


@pytest.mark.slow
def test_runs_logging_one_dataset_at_once_all_record_it(tmp_path, state_dir):
    """Evaluations on every rank, or trainings on one export, log the same dataset at the same
    moment: PostgreSQL refuses the second insert of its row; each run still records its input.
    Rounds of writers, each round a dataset new to the store (the race is on its first insert)."""
    server = tracking_server.start(state_dir, port=free_port(), pg_port=free_port())
    try:
        mlflow.set_tracking_uri(server.uri)
        experiment = tracking.get_or_create_experiment("evaluate", None)
        writers, rounds, failures, logged = 8, 12, [], []

        def evaluate(start: threading.Barrier, digest: str) -> None:
            with mlflow.start_run(experiment_id=experiment) as run:   # (a run per thread: thread-local)
                start.wait()
                try:
                    tracking.log_dataset(tmp_path, "mcc-embeddings", digest, "evaluation")
                    logged.append((run.info.run_id, digest))
                except Exception as exc:   # collected: an exception in a thread would be lost
                    failures.append(exc)

        for r in range(rounds):
            start = threading.Barrier(writers)
            threads = [threading.Thread(target=evaluate, args=(start, f"round{r}")) for _ in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert failures == [] and len(logged) == writers * rounds
        client = mlflow.MlflowClient(server.uri)
        for run_id, digest in logged:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("mcc-embeddings", digest)]
    finally:
        assert tracking_server.stop(state_dir)
