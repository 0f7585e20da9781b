"""LocSens through the training entry: composed experiments, sigma snapshots evaluated and logged
to MLflow, resume from last.ckpt, and a 2-process DDP run."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from helpers.config import TINY_LOCSENS, compose
from helpers.embeddings import write_embeddings
from omegaconf import open_dict

from common.embeddings import EmbeddingsManifest
from training.report.results import collect_results, ordered
from training.report.tables import location_table
from training.run import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    return write_embeddings(tmp_path_factory.mktemp("emb"))


@pytest.fixture
def locsens_cfg(train_cfg, embeddings):
    """A tiny LocSens run on the fixture export (the tiny settings win over the experiment's)."""
    return lambda *overrides: train_cfg(*overrides, *TINY_LOCSENS, "trainer.log_every_n_steps=1",
                                        "model.optimizer.lr=0.05", embeddings=embeddings)


@pytest.mark.parametrize("experiment, location, negatives", [
    ("locsens", "sampling", "retrieval"), ("locsens_raw", "raw", "tagging"), ("locsens_zeroed", "zeroed", "tagging"),
    ("locsens_dropout", "dropout", "retrieval"), ("locsens_raw_retrieval", "raw", "retrieval"),
    ("locsens_zeroed_retrieval", "zeroed", "retrieval")])
def test_experiments_compose(tmp_path, locsens_cfg, experiment, location, negatives):
    cfg = locsens_cfg(f"+experiment={experiment}")
    assert cfg.task_name == experiment and cfg.model.location == location
    assert cfg.model.negatives_mode == negatives     # the paper trains one model per task
    cpu = "locsens_sigma" if experiment == "locsens" else "locsens"
    sample = compose("train", f"+experiment={experiment}", f"+sample={cpu}")
    assert sample.task_name == experiment and sample.model.negatives_mode == negatives
    assert sample.model.hidden == [256, 256, 128] and sample.trainer.max_epochs == (40 if cpu == "locsens_sigma" else 25)
    assert cfg.model._target_ == "training.models.locsens.LocSens"
    assert cfg.data._target_ == "training.data.embeddings.LocSensDataModule"
    assert "location_schedule" in cfg.callbacks and "embedding_writer" not in cfg.callbacks
    paper = locsens_cfg(f"+experiment={experiment}")
    full = compose("train", f"+experiment={experiment}")
    assert list(full.model.hidden) == [2048, 2048, 2048, 1024, 512] and full.data.batch_size == 1024
    assert full.model.negatives == 6 and full.model.margin == 0.1 and full.model.optimizer.momentum == 0.9
    assert paper.model.sigma_schedule[0][0] == 1.0 and paper.model.sigma_schedule[-1][0] == 0.0
    # The sigma-schedule model anneals within each sigma stage (each snapshot settled); the others
    # have one stage to settle in.
    staged = location == "sampling"
    for c in (cfg, sample):
        assert c.model.scheduler._target_.endswith("staged_cosine" if staged else "warmup_cosine")
        assert (c.model.scheduler.get("stages") == c.model.sigma_schedule) if staged else "stages" not in c.model.scheduler


def test_sigma_schedule_run_evaluates_every_snapshot(tmp_path, embeddings, locsens_cfg):
    cfg = locsens_cfg("+experiment=locsens", "trainer.max_epochs=2")
    metrics = train(cfg)
    for sigma in ("1", "0.1", "0.05", "0.01"):
        assert f"locsens_sigma_{sigma}/retrieval/P@10_25km" in metrics
    assert "retrieval/P@10_agnostic" in metrics                                  # the final sigma_0 model
    assert not any(k.startswith("tagging/") for k in metrics)    # a retrieval model: scored on retrieval
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns.db")
    runs = mlflow.search_runs(experiment_names=["evaluate"])
    assert sorted(runs["tags.mlflow.runName"]) == sorted(f"locsens_sigma_{s}" for s in ("1", "0.1", "0.05", "0.01", "0"))
    assert "metrics.retrieval/P_at_10_25km" in runs.columns
    # Each run names the export it scored, so the report can skip runs on re-exported embeddings.
    assert set(runs["tags.embeddings_export_id"]) == {EmbeddingsManifest.read(embeddings).export_id}
    train_runs = mlflow.search_runs(experiment_names=["train"])
    assert "metrics.locsens/sigma" in train_runs.columns



@pytest.mark.slow
def test_the_report_follows_a_changed_sigma_schedule(tmp_path, locsens_cfg):
    """The schedule lives in the config alone: snapshot names, evaluation runs and the report's rows
    all follow it (three stages at 1, 0.3 and 0 here, not the paper's five)."""
    cfg = locsens_cfg("+experiment=locsens", "trainer.max_epochs=2",
                      "model.sigma_schedule=[[1.0,0.5],[0.3,0.25],[0.0,0.25]]")
    metrics = train(cfg)
    assert {k.split("/")[0] for k in metrics if k.startswith("locsens_sigma")} == {"locsens_sigma_1", "locsens_sigma_0.3"}
    assert sorted(p.name for p in (tmp_path / "outputs" / "locsens" / "checkpoints").glob("sigma_*")) == [
        "sigma_0.3.ckpt", "sigma_0.ckpt", "sigma_1.ckpt"]
    results = collect_results(f"sqlite:///{tmp_path}/mlruns.db").retrieval
    assert [k for k, r in ordered(results) if r.sigma is not None] == [
        "locsens_sigma_1", "locsens_sigma_0.3", "locsens_sigma_0"]
    table = location_table(results)
    labels = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]]
    assert labels == [f"LocSens - location sampling, sigma={s} (1 run, single seed)" for s in ("1", "0.3", "0")]
    assert "(40.60)" in table and "sigma=0.3 (1 run, single seed) | " in table and "(40.03)" not in table   # paper values where it has them

@pytest.mark.slow
def test_raw_run_resumes_from_last_checkpoint(tmp_path, locsens_cfg):
    cfg = locsens_cfg("+experiment=locsens_raw", "trainer.max_epochs=1", "evaluate=false",
                      "callbacks.val_tagging.images=16")
    train(cfg)
    last = tmp_path / "outputs" / "locsens_raw" / "checkpoints" / "last.ckpt"
    assert last.exists() and (last.parent / "best.ckpt").exists()
    # The learning curve: tagging accuracy on 16 validation images after the epoch, as MCC logs it.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run_id = json.loads((last.parents[1] / "mlflow_run.json").read_text())["run_id"]
    for key in ("val/A_at_1", "val/A_at_10"):
        history = client.get_metric_history(run_id, key)
        assert len(history) == 1 and 0 <= history[0].value <= 100 and history[0].value * 16 % 100 < 1e-6
    cfg2 = locsens_cfg("+experiment=locsens_raw", "trainer.max_epochs=2", "resume=true")
    with open_dict(cfg2):
        cfg2.callbacks.count = {"_target_": "helpers.callbacks.CountEpochs", "out": str(tmp_path / "epochs.txt")}
    metrics = train(cfg2)
    assert (tmp_path / "epochs.txt").read_text().split() == ["1"]        # only the remaining epoch
    assert metrics["tagging/A@1"] >= 0
    # train=false evaluates a given checkpoint (weights-only loading), not random weights.
    best = last.parent / "best.ckpt"
    again = train(locsens_cfg("+experiment=locsens_raw", "train=false", f"ckpt_path={best}"))
    assert again["tagging/A@1"] == pytest.approx(metrics["tagging/A@1"])
    assert torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]["hidden"] == [64, 32]


@pytest.mark.slow
def test_ddp_spawn_two_processes(tmp_path, locsens_cfg):
    cfg = locsens_cfg("+experiment=locsens_raw", "trainer=ddp_sim", "trainer.max_epochs=1",
                      "evaluate=false")
    with open_dict(cfg):
        cfg.callbacks.draws = {"_target_": "helpers.callbacks.RecordDraws", "out_dir": str(tmp_path)}
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"])
    # The global batch (50) split over the two ranks, and each rank its own draws.
    draws = [json.loads((tmp_path / f"draws-r{r}.json").read_text()) for r in (0, 1)]
    assert [d["batch"] for d in draws] == [25, 25]
    assert draws[0]["seed"] != draws[1]["seed"]
