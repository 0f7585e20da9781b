"""Faults injected from outside into real training processes, compared with runs that were not
disturbed; each test adds its rows to the fault table (tests/helpers/faults.py, ``make faults``)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import ROOT
from helpers.config import CPU, TINY_IMAGE, TINY_LOCSENS, compose, paths
from helpers.faults import MlflowServer, kill_when, record

pytestmark = pytest.mark.faults


# --- training killed mid-epoch, resumed ----------------------------------------------------------------

#: Deterministic runs (resumed runs must end with the uninterrupted run's weights), in the test's
#: process or as their own (the same arguments).
#: MCC: two loader workers (whose turn the resumed loader must keep), last.ckpt after every step.
MCC_ARGS = ["+experiment=mcc", *[a for a in CPU if not a.startswith("data.num_workers")], "data.num_workers=2",
            *TINY_IMAGE, "trainer.max_epochs=3", "trainer.deterministic=true", "torch_threads=1",
            "callbacks.step_checkpoint.every_n_train_steps=1"]


def _weights(checkpoint: Path) -> dict:
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_training_killed_mid_epoch_resumes_to_the_same_weights_in_one_mlflow_run(tmp_path):
    import os
    import sys

    import mlflow
    import torch
    from helpers.shards import make_shards

    from training.run import train

    shards = tmp_path / "shards"
    make_shards(shards, rows={"train": 64, "val": 24, "test": 24}, row_group_size=8, files_per_split=2)
    train(compose("train", *MCC_ARGS, *paths(tmp_path / "reference", shards)))       # uninterrupted

    root = tmp_path / "killed"
    marker = tmp_path / "batch.marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCSENS_FAILPOINT": f"train_batch@0.1.2:{marker}"}
    ran = kill_when([sys.executable, "-m", "training.run", *MCC_ARGS, *paths(root, shards)], marker.exists,
                    tmp_path / "killed.log", cwd=ROOT, env=env)
    last = root / "outputs" / "mcc" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 6)       # killed inside epoch 1, after its batch 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == 2
    t0 = time.perf_counter()
    train(compose("train", *MCC_ARGS, *paths(root, shards), "resume=true"))
    recovery = time.perf_counter() - t0

    want, got = _weights(tmp_path / "reference" / "outputs" / "mcc" / "checkpoints" / "last.ckpt"), _weights(last)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["resumed"] == "1"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/loss")] == [3, 7, 11]
    record("MCC training killed mid-epoch", f"SIGKILL {ran:.0f} s in, at epoch 1 batch 2 (of 4), 2 loader workers",
           "resume=true went on at batch 2 from the mid-epoch last.ckpt (every step here) in the same MLflow run; "
           "weights equal the uninterrupted run's", "0 steps", recovery)


LOCSENS_ARGS = ["+experiment=locsens", "trainer.max_epochs=4", "model.sigma_schedule=[[1.0,0.5],[0.3,0.25],[0.0,0.25]]",
                *TINY_LOCSENS, *CPU, "trainer.deterministic=true", "torch_threads=1",
                "callbacks.step_checkpoint.every_n_train_steps=2"]


def test_locsens_killed_in_a_later_sigma_stage_resumes_to_the_same_snapshots_and_metrics(tmp_path):
    import os
    import sys

    import torch
    from helpers.embeddings import write_embeddings

    from training.run import train

    export = write_embeddings(tmp_path / "export")

    def args(root: Path) -> list[str]:
        return [*LOCSENS_ARGS, *paths(root, embeddings=export)]

    reference = train(compose("train", *args(tmp_path / "reference")))
    root = tmp_path / "killed"
    marker = tmp_path / "batch.marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCSENS_FAILPOINT": f"train_batch@0.2.5:{marker}"}
    ran = kill_when([sys.executable, "-m", "training.run", *args(root)], marker.exists, tmp_path / "killed.log",
                    cwd=ROOT, env=env)
    snapshots = root / "outputs" / "locsens" / "checkpoints"
    assert sorted(p.name for p in snapshots.glob("sigma_*")) == ["sigma_1.ckpt"]     # killed in the sigma=0.3 stage
    saved = torch.load(snapshots / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and "locsens" in saved["locsens_mid_epoch"]["draws"][0]  # inside epoch 2
    t0 = time.perf_counter()
    resumed = train(compose("train", *args(root), "resume=true"))
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
           "(sigma=0.3 stage)",
           "resume=true from the mid-epoch last.ckpt (every 2 steps here): same sigma stages, snapshots "
           "(weights equal) and metrics", "0 steps", recovery)


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
    from helpers.embeddings import write_embeddings

    export = write_embeddings(tmp_path / "export")

    def argv(root: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "training.run", *LOCSENS_ARGS, "trainer=ddp_sim", "trainer.strategy=ddp",
                "evaluate=false", *paths(root, embeddings=export), *extra]

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
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns.db")
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
    from helpers.servers import free_port
    from helpers.shards import make_shards

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
