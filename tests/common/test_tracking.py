"""MLflow bookkeeping: experiments the UI opens on their runs, with a description each; telemetry off."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from common import metrics as M
from common.tracking import (DESCRIPTION_TAG, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, GROUP_ENV, GROUP_PARENT_TAG,
                             GROUP_TAG, NOTE_TAG, PARENT_TAG, describe, get_or_create_experiment, group_parent,
                             latest_finished_run, link_runs, producer, stage_run)


def test_experiments_are_model_training_experiments_with_a_description(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    with stage_run("evaluate", "run", {"a": 1}, tracking_uri=uri, artifact_root=str(tmp_path / "art")):
        pass
    with stage_run("pipeline/clean_metadata", "clean_metadata", {}, tracking_uri=uri):
        pass
    client = mlflow.MlflowClient(uri)
    for name, words in (("evaluate", "P@10"), ("pipeline/clean_metadata", "spark-submit jobs/clean_metadata.py")):
        tags = client.get_experiment_by_name(name).tags
        assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
        assert words in tags[DESCRIPTION_TAG] and tags[DESCRIPTION_TAG] == describe(name)


def test_an_experiment_made_before_gets_its_kind(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    mlflow.set_tracking_uri(uri)
    old = mlflow.create_experiment("train")          # as older code made it: no tags
    assert get_or_create_experiment("train", None) == old
    tags = mlflow.MlflowClient(uri).get_experiment(old).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND and "training.run" in tags[DESCRIPTION_TAG]


def test_telemetry_is_off_unless_the_user_allows_it():
    """In a fresh process without the setting (pytest itself would hide telemetry from MLflow)."""
    code = ("import common.tracking; from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY as T; "
            "print(T.get())")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "PYTEST_CURRENT_TEST")}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    allowed = subprocess.run([sys.executable, "-c", code], env={**env, "MLFLOW_DISABLE_TELEMETRY": "false"}, cwd=root,
                             capture_output=True, text=True, check=True)
    assert allowed.stdout.strip() == "False"


# --- run groups (a parent run per demo) and lineage links -------------------------------------------

def _group_child(uri: str, group: str, experiment: str) -> None:
    os.environ[GROUP_ENV] = group
    with stage_run(experiment, "child", {}, tracking_uri=uri):
        pass


def test_a_group_nests_its_runs_under_one_parent_per_experiment(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv(GROUP_ENV, "demo 2026-11-30T17:00:00Z")
    mlflow.MlflowClient(uri).search_experiments()      # the store exists (MLflow's schema set-up is not concurrent)
    # Two processes start the group's first runs at once: one parent between them.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_group_child, args=(uri, "demo 2026-11-30T17:00:00Z", "evaluate")) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with stage_run("evaluate", "mcc", {}, tracking_uri=uri):
        pass
    with stage_run("train", "mcc", {}, tracking_uri=uri):
        pass
    monkeypatch.delenv(GROUP_ENV)
    with stage_run("evaluate", "outside", {}, tracking_uri=uri):
        pass
    client = mlflow.MlflowClient(uri)
    for name, children in (("evaluate", 3), ("train", 1)):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        parents = [r for r in runs if GROUP_PARENT_TAG in r.data.tags]
        assert [p.info.run_name for p in parents] == ["demo 2026-11-30T17:00:00Z"]
        assert parents[0].info.status == "FINISHED" and "Chart view" in parents[0].data.tags[NOTE_TAG]
        nested = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
        assert len(nested) == children
        assert all(r.data.tags[GROUP_TAG] == "demo 2026-11-30T17:00:00Z" for r in nested)
    outside = client.search_runs([client.get_experiment_by_name("evaluate").experiment_id],
                                 filter_string="attributes.run_name = 'outside'")[0]
    assert PARENT_TAG not in outside.data.tags


def test_a_bad_group_name_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(GROUP_ENV, "demo'; drop")
    with pytest.raises(ValueError, match=GROUP_ENV):
        with stage_run("evaluate", "x", {}, tracking_uri=f"sqlite:///{tmp_path}/m.db"):
            pass


def test_lineage_links_a_job_to_training_to_evaluation(tmp_path):
    from training.evaluate.runs import log_evaluation

    uri = f"sqlite:///{tmp_path}/m.db"
    with stage_run("pipeline/shard_dataset", "shard_dataset", {}, tracking_uri=uri):
        shards = producer()
    with stage_run("train", "mcc", {}, tracking_uri=uri):
        training = producer()
    client = mlflow.MlflowClient(uri)
    link_runs(client, upstream=shards, downstream=training, what="shards")
    link_runs(client, upstream=shards, downstream=training, what="shards")          # once, not twice
    metrics = {M.location_metric_name(g): float(i) for i, g in enumerate(M.GRANULARITIES_KM)}
    evaluation = log_evaluation(metrics, {}, tracking_uri=uri, artifact_root=None, run_name="mcc",
                                tags={"train_run_id": training["run_id"]})
    job, train, ev = (client.get_run(r) for r in (shards["run_id"], training["run_id"], evaluation))
    assert train.data.tags["lineage.shards"] == job.info.run_id and ev.data.tags["lineage.model"] == train.info.run_id
    assert train.data.tags[NOTE_TAG] == (
        f"Uses the shards of [shard_dataset](#/experiments/{job.info.experiment_id}/runs/{job.info.run_id}).\n"
        f"Its model used by [mcc](#/experiments/{ev.info.experiment_id}/runs/{ev.info.run_id}).")
    assert f"runs/{train.info.run_id})" in ev.data.tags[NOTE_TAG] and f"runs/{train.info.run_id})" in job.data.tags[
        NOTE_TAG]
    # P@10 against distance as one metric whose steps are the thresholds in km (one chart line per run).
    history = client.get_metric_history(evaluation, M.P10_BY_KM)
    assert [(h.step, h.value) for h in history] == [(1, 0.0), (25, 1.0), (200, 2.0), (750, 3.0), (2500, 4.0)]
    # A producer from another tracking store is not linked (and nothing fails).
    link_runs(client, upstream={"run_id": "0" * 32, "experiment_id": "9"}, downstream=training, what="embeddings")
    assert "lineage.embeddings" not in client.get_run(training["run_id"]).data.tags


def test_the_latest_run_of_a_stage_is_never_a_group_parent(tmp_path, monkeypatch):
    """The report reads each pipeline stage's latest run: a parent made after it must not hide it."""
    uri = f"sqlite:///{tmp_path}/m.db"
    with stage_run("pipeline/clean_metadata", "clean_metadata", {}, tracking_uri=uri) as run:
        mlflow.log_metric("kept", 5)
    later = group_parent(run.info.experiment_id, "demo later")
    assert mlflow.MlflowClient(uri).get_run(later).info.start_time >= run.info.start_time
    assert latest_finished_run("pipeline/clean_metadata").info.run_id == run.info.run_id
    assert latest_finished_run("pipeline/nothing") is None


def test_a_metric_buffer_keeps_metrics_while_the_server_is_down(tmp_path, caplog):
    """Kept in order while sending fails, tried at most every retry_seconds, all sent once it works;
    what never gets through lands in the unsent file with one warning."""
    from common.tracking import MetricBuffer

    sent, up, tries = [], {"up": True}, []

    stamps: dict[int, set] = {}

    def send(metrics, step, timestamp_ms):
        tries.append(step)
        stamps.setdefault(step, set()).add(timestamp_ms)
        if not up["up"]:
            raise ConnectionError("Connection refused")
        sent.append((step, metrics))

    buffer = MetricBuffer(send, where="http://127.0.0.1:1", retry_seconds=3600, unsent_path=str(tmp_path / "u.jsonl"))
    buffer.log({"a": 1.0}, 0)
    up["up"] = False
    for step in (1, 2, 3):
        buffer.log({"a": float(step)}, step)
    assert tries == [0, 1] and len(buffer.pending) == 3          # one failed try, then no waiting on the server
    up["up"] = True
    assert buffer.flush() and [s for s, _ in sent] == [0, 1, 2, 3] and buffer.pending == []
    assert sum("unreachable" in r.message for r in caplog.records) == 1
    assert sum("is back after" in r.message for r in caplog.records) == 1
    assert len(stamps[1]) == 1                                  # the retry of step 1 carried its first stamp
    up["up"] = False
    buffer.log({"a": 9.0}, 9)
    assert not buffer.close(timeout=0)
    assert json.loads((tmp_path / "u.jsonl").read_text())["step"] == 9
    assert any("1 metric batches not sent; kept in" in r.message for r in caplog.records)


def test_a_batch_the_server_stored_before_the_connection_broke_is_kept_once(tmp_path):
    """The send that fails may have reached the store (the reply was lost): the retry sends the
    same batch with the same stamp, and a real SQL store keeps one copy of each metric."""
    import mlflow

    from common.tracking import MetricBuffer

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run = client.create_run(client.create_experiment("x"))
    lost = {"reply": True}

    def send(metrics, step, timestamp_ms):
        client.log_batch(run.info.run_id, [mlflow.entities.Metric(k, v, timestamp_ms, step) for k, v in metrics.items()])
        if lost.pop("reply", False):
            raise ConnectionError("Connection reset by peer")

    buffer = MetricBuffer(send, where="test", retry_seconds=0)
    buffer.log({"loss": 0.5}, 0)
    assert len(buffer.pending) == 1 and buffer.flush()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(0, 0.5)]


def test_with_a_tracking_server_artifacts_go_to_the_servers_root():
    from common.tracking import experiment_location

    assert experiment_location("train", "/data/mlartifacts", "sqlite:////data/mlruns.db") == "file:///data/mlartifacts/train"
    assert experiment_location("pipeline/clean", "/data/mlartifacts", "http://mlflow:5000") is None
    assert experiment_location("train", "s3://bucket/mlflow/", "http://mlflow:5000") == "s3://bucket/mlflow/train"
    assert experiment_location("train", None, "sqlite:///x.db") is None
