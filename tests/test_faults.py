"""Faults injected from outside into real processes, compared with runs that were not disturbed;
each test adds its rows to the fault table (tests/faults.py, ``make faults``)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from faults import MlflowServer, kill_when, record, spark_env
from job_helpers import job_config

from common.failpoints import ENV as FAILPOINT_ENV

pytestmark = [pytest.mark.spark, pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["vocab.drop_top=0", "vocab.size=2000"]


def _rows(spark, path: str) -> list[tuple]:
    """An output's rows, sorted (a Parquet folder or file; text outputs by line)."""
    if Path(path).suffix == ".json" or (Path(path).is_dir() and not any(Path(path).rglob("*.parquet"))):
        return sorted((str(p.relative_to(path)), p.read_text()) for p in Path(path).rglob("*") if p.is_file())
    return sorted(tuple(map(str, r)) for r in spark.read.parquet(path).collect())


def _temps(folder: Path) -> list[str]:
    """Temps and set-aside outputs under ``folder`` (pipeline/io.py names them ``.<name>.tmp-*``, ``.old-*``)."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


JOBS = {   # job -> the outputs it publishes (conf/pipeline.yaml outputs.*)
    "clean_metadata": ("clean", "clean_rejects", "place_names"),
    "build_vocab": ("vocab", "dataset", "dataset_rejects", "stats"),
    "frequency_baselines": ("baselines",),
}


def test_each_spark_job_killed_mid_write_reruns_to_the_same_outputs(spark, tmp_path, synth_world):
    """For each job in pipeline order: a run as reference; the same job under spark-submit,
    SIGKILLed as soon as its first temp output appears on disk (mid-write); the published outputs
    must be the reference's, untouched; rerunning the same job must clear the temps and publish
    the same rows again."""
    import importlib

    cfg = job_config(tmp_path, synth_world, *SETTINGS)
    work = Path(cfg.paths.work_dir)
    args = [f"paths.root_dir={tmp_path}", f"paths.raw_dir={synth_world}",
            f"paths.mlflow_tracking_uri=sqlite:///{tmp_path}/mlruns.db", "spark.shuffle_partitions=2", *SETTINGS]
    for job, outputs in JOBS.items():
        main = importlib.import_module(f"jobs.{job}").main
        main(cfg)
        reference = {o: _rows(spark, cfg.outputs[o]) for o in outputs}
        submit = ["spark-submit", "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                  str(ROOT / "jobs" / f"{job}.py"), *args]
        # Killed when a temp output appears (Spark writing), or at the latest with every output
        # written and none published (the publish failpoint: jobs whose outputs are small files).
        marker = tmp_path / f"{job}.publishing"
        env = {**spark_env(), FAILPOINT_ENV: f"publish:{marker}"}
        ran = kill_when(submit, lambda: bool(_temps(work)) or marker.exists(), tmp_path / f"{job}.log", cwd=ROOT,
                        env=env)
        left = _temps(work)
        assert left, "killed before it wrote anything"
        assert {o: _rows(spark, cfg.outputs[o]) for o in outputs} == reference      # nothing half-written visible
        t0 = time.perf_counter()
        main(cfg)                                                                     # the same job again
        recovery = time.perf_counter() - t0
        assert _temps(work) == []                                                     # the killed run's temps gone
        assert {o: _rows(spark, cfg.outputs[o]) for o in outputs} == reference
        point = "at publish (every output written)" if marker.exists() else f"when {left[0].split('.tmp-')[0]} appeared"
        record(f"{job} killed mid-write", f"SIGKILL to spark-submit's process group {ran:.0f} s in, {point}",
               f"outputs untouched; rerun removed {len(left)} temp(s)", "0 rows", recovery)


# --- training killed mid-epoch, resumed ----------------------------------------------------------------

MCC_ARGS = ["+experiment=mcc", "data.num_workers=0", "data.persistent_workers=false",
            "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0", "trainer.max_epochs=3",
            "trainer.deterministic=true", "torch_threads=1", "evaluation.min_images=5", "model.backbone.name=resnet18",
            "model.backbone.pretrained=false", "data.batch_size=16", "data.crop=32", "data.prefetch_factor=null",
            "evaluation.chunk=16"]


def _paths(root: Path, shards: Path) -> list[str]:
    return [f"paths.root_dir={root}", f"paths.shards_dir={shards}", f"paths.mlflow_tracking_uri=sqlite:///{root}/m.db"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train.yaml", overrides=overrides)


def _weights(checkpoint: Path) -> dict:
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_training_killed_mid_epoch_resumes_to_the_same_weights_in_one_mlflow_run(tmp_path):
    import os
    import sys

    import mlflow
    import torch
    from shard_fixture import make_shards

    from training.run import train

    shards = tmp_path / "shards"
    make_shards(shards, rows={"train": 64, "val": 24, "test": 24}, row_group_size=8, files_per_split=2)
    train(_compose([*MCC_ARGS, *_paths(tmp_path / "reference", shards)]))       # uninterrupted

    root = tmp_path / "killed"
    marker = tmp_path / "batch.marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCSENS_FAILPOINT": f"train_batch@0.1.2:{marker}"}
    ran = kill_when([sys.executable, "-m", "training.run", *MCC_ARGS, *_paths(root, shards)], marker.exists,
                    tmp_path / "killed.log", cwd=ROOT, env=env)
    last = root / "outputs" / "mcc" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0     # killed inside epoch 1
    t0 = time.perf_counter()
    train(_compose([*MCC_ARGS, *_paths(root, shards), "resume=true"]))
    recovery = time.perf_counter() - t0

    want, got = _weights(tmp_path / "reference" / "outputs" / "mcc" / "checkpoints" / "last.ckpt"), _weights(last)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    client = mlflow.MlflowClient(f"sqlite:///{root}/m.db")
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["resumed"] == "1"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/loss")] == [3, 7, 11]
    record("MCC training killed mid-epoch", f"SIGKILL {ran:.0f} s in, at epoch 1 batch 2 (of 4)",
           "resume=true went on from last.ckpt in the same MLflow run; weights equal the uninterrupted run's",
           "0 steps (epoch 1 redone from its start)", recovery)


LOCSENS_ARGS = ["+experiment=locsens", "trainer.max_epochs=4", "model.sigma_schedule=[[1.0,0.5],[0.3,0.25],[0.0,0.25]]",
                "model.input_dim=32", "model.modality_dim=32", "model.hidden=[64,32]", "model.groups=8",
                "data.batch_size=50", "data.num_workers=0", "data.persistent_workers=false", "data.shards_dir=null",
                "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0", "evaluation.min_images=5",
                "trainer.deterministic=true", "torch_threads=1"]


def test_locsens_killed_in_a_later_sigma_stage_resumes_to_the_same_snapshots_and_metrics(tmp_path):
    import os
    import sys

    import torch
    from embeddings_fixture import write_embeddings

    from training.run import train

    export = write_embeddings(tmp_path / "export")

    def args(root: Path) -> list[str]:
        return [*LOCSENS_ARGS, f"paths.root_dir={root}", f"data.embeddings_dir={export}",
                f"paths.mlflow_tracking_uri=sqlite:///{root}/m.db"]

    reference = train(_compose(args(tmp_path / "reference")))
    root = tmp_path / "killed"
    marker = tmp_path / "batch.marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCSENS_FAILPOINT": f"train_batch@0.2.5:{marker}"}
    ran = kill_when([sys.executable, "-m", "training.run", *args(root)], marker.exists, tmp_path / "killed.log",
                    cwd=ROOT, env=env)
    snapshots = root / "outputs" / "locsens" / "checkpoints"
    assert sorted(p.name for p in snapshots.glob("sigma_*")) == ["sigma_1.ckpt"]     # killed in the sigma=0.3 stage
    t0 = time.perf_counter()
    resumed = train(_compose([*args(root), "resume=true"]))
    recovery = time.perf_counter() - t0

    want = tmp_path / "reference" / "outputs" / "locsens" / "checkpoints"
    assert sorted(p.name for p in snapshots.glob("sigma_*")) == sorted(p.name for p in want.glob("sigma_*")) == [
        "sigma_0.3.ckpt", "sigma_0.ckpt", "sigma_1.ckpt"]
    for name in ("sigma_1.ckpt", "sigma_0.3.ckpt", "sigma_0.ckpt"):
        a, b = _weights(want / name), _weights(snapshots / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    evaluated = {k: v for k, v in reference.items()
                 if k.startswith(("locsens_sigma", "tagging", "retrieval")) and not k.endswith("/seconds")}
    assert evaluated and {k: resumed[k] for k in evaluated} == evaluated
    record("LocSens sigma-schedule run killed in a later sigma stage", f"SIGKILL {ran:.0f} s in, at epoch 2 batch 5 "
           "(sigma=0.3 stage)", "resume=true: same sigma stages, snapshots (weights equal) and metrics",
           "0 steps", recovery)


def test_a_ddp_rank_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """A LocSens sigma-schedule run on two DDP processes (Lightning re-launches the command for rank
    1); rank 1 is SIGKILLed inside epoch 2 (the sigma=0.3 stage); rank 0 must not hang; resume=true
    on both ranks ends with the uninterrupted run's weights."""
    import os
    import signal
    import subprocess
    import sys

    import mlflow
    import torch
    from embeddings_fixture import write_embeddings

    export = write_embeddings(tmp_path / "export")

    def argv(root: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "training.run", *LOCSENS_ARGS, "trainer=ddp_sim", "trainer.strategy=ddp",
                "evaluate=false", f"paths.root_dir={root}", f"data.embeddings_dir={export}", f"paths.mlflow_tracking_uri=sqlite:///{root}/m.db",
                *extra]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv(tmp_path / "reference"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    root, marker = tmp_path / "killed", tmp_path / "rank1.marker"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv(root), cwd=ROOT, env={**env, "LOCSENS_FAILPOINT": f"train_batch@1.2.2:{marker}"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        os.kill(int(marker.read_text()), signal.SIGKILL)         # rank 1 only: a lost machine
        t0 = time.perf_counter()
        try:
            rc = proc.wait(timeout=180)                          # rank 0 sees the lost peer and stops
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stopped = time.perf_counter() - t0
    assert rc != 0
    t0 = time.perf_counter()
    resumed = subprocess.run(argv(root, "resume=true"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    recovery = time.perf_counter() - t0
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    name = "outputs/locsens/checkpoints/last.ckpt"
    want, got = _weights(tmp_path / "reference" / name), _weights(root / name)
    assert all(torch.equal(want[k], got[k]) for k in want)
    client = mlflow.MlflowClient(f"sqlite:///{root}/m.db")
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["resumed"] == "1"
    record("DDP rank 1 of 2 killed mid-epoch (LocSens, sigma schedule)",
           "SIGKILL to rank 1's process at epoch 2 batch 2",
           f"rank 0 stopped {stopped:.0f} s later (exit {rc}); resume=true on 2 ranks: weights equal, one MLflow run",
           "0 steps", recovery)


# --- the MLflow tracking server goes away --------------------------------------------------------------

def test_training_outlives_a_tracking_server_that_goes_away(tmp_path):
    """``mlflow server`` on loopback is SIGKILLed after the first epoch and restarted two epochs
    later: training neither crashes nor waits; every metric reaches the run once the server is
    back (as many as an undisturbed run logs), with one warning each way; the run ends FINISHED."""
    import os
    import subprocess
    import sys

    import mlflow
    import torch
    from servers import free_port
    from shard_fixture import make_shards

    shards = tmp_path / "shards"
    make_shards(shards, rows={"train": 64, "val": 24, "test": 24}, row_group_size=8, files_per_split=2)
    args = [*MCC_ARGS, "trainer.max_epochs=6", "trainer.log_every_n_steps=1", "logger.mlflow.retry_seconds=2",
            "evaluate=false", "callbacks.embedding_writer=null"]
    server = MlflowServer(tmp_path, free_port())
    uri = server.uri

    def epoch_done(n: int) -> bool:
        last = tmp_path / "run" / "checkpoints" / "last.ckpt"
        try:
            return last.exists() and torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= n
        except Exception:              # being written
            return False

    server.start()
    log = tmp_path / "train.log"
    training = subprocess.Popen(
        [sys.executable, "-m", "training.run", *args, f"paths.root_dir={tmp_path}", f"paths.shards_dir={shards}",
         f"paths.mlflow_tracking_uri={uri}", f"run_dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        while not epoch_done(0):
            assert training.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        server.kill()
        down = time.perf_counter()
        while not epoch_done(2):                     # training goes on without the server
            assert training.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        server.start()
        recovery = time.perf_counter() - down
        assert training.wait(timeout=600) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert text.count("unreachable") == 1 and text.count("is back after") == 1, text[-3000:]
        client = mlflow.MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
        assert run.info.status == "FINISHED"
        steps = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
                 for key in ("train/loss", "val/loss")}
        assert steps["train/loss"] == list(range(6 * 4)) and steps["val/loss"] == [3, 7, 11, 15, 19, 23]  # all 6 epochs
    finally:
        training.kill()
        server.kill()
    record("MLflow tracking server killed during training", "SIGKILL to `mlflow server` after epoch 0, restarted "
           "after epoch 2", "training went on; metrics kept and sent when the server was back; one warning each way",
           "0 metrics", recovery)


def test_a_pipeline_job_outlives_a_tracking_server_that_goes_away(spark, tmp_path, synth_world):
    """clean_metadata under spark-submit logs to ``mlflow server``, which is SIGKILLed once the job
    has started reading and restarted once the job has noticed: the job finishes and publishes;
    its run holds every metric an undisturbed run logs, and ends FINISHED."""
    import subprocess

    import mlflow
    from servers import free_port

    from jobs.clean_metadata import main as clean_metadata

    reference = job_config(tmp_path / "reference", synth_world, *SETTINGS)
    clean_metadata(reference)
    server = MlflowServer(tmp_path, free_port())
    server.start()
    args = [f"paths.root_dir={tmp_path}", f"paths.raw_dir={synth_world}", f"paths.mlflow_tracking_uri={server.uri}",
            "spark.shuffle_partitions=2", "mlflow.retry_seconds=2", *SETTINGS]
    log = tmp_path / "job.log"
    job = subprocess.Popen(["spark-submit", "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                            str(ROOT / "jobs" / "clean_metadata.py"), *args], cwd=ROOT, env=spark_env(),
                           stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        for marker in ("reading ", "unreachable"):
            while marker not in log.read_text():
                assert job.poll() is None, log.read_text()[-3000:]
                time.sleep(0.05)
            if marker == "reading ":
                server.kill()
                down = time.perf_counter()
        server.start()
        recovery = time.perf_counter() - down
        assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert text.count("unreachable") == 1 and text.count("is back after") == 1, text[-3000:]
        client = mlflow.MlflowClient(server.uri)
        run = client.search_runs([client.get_experiment_by_name("pipeline/clean_metadata").experiment_id])[0]
        ref = mlflow.MlflowClient(reference.paths.mlflow_tracking_uri)
        ref_run = ref.search_runs([ref.get_experiment_by_name("pipeline/clean_metadata").experiment_id])[0]
        assert run.info.status == "FINISHED" and run.data.metrics.keys() == ref_run.data.metrics.keys()
        assert run.data.metrics["kept"] == ref_run.data.metrics["kept"]
        assert _rows(spark, f"{tmp_path}/data/work/clean") == _rows(spark, reference.outputs.clean)
    finally:
        job.kill()
        server.kill()
    record("MLflow tracking server killed during a Spark job (clean_metadata)", "SIGKILL to `mlflow server` once "
           "the job was reading, restarted once it noticed", "job finished and published; metrics sent when the "
           "server was back; one warning each way", "0 metrics, 0 rows", recovery)
