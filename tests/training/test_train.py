"""Training entry: composed configs, fast_dev_run of every model, full run with export and
evaluation, resume from last.ckpt, DDP (2 CPU processes) reading every row exactly once."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch
from helpers.config import TINY_IMAGE, compose
from helpers.shards import shards_fixture
from omegaconf import OmegaConf, open_dict

from common.contract import read_manifest
from common.embeddings import EmbeddingsManifest
from training.errors import SetupError
from training.launch import Launch, trainer_overrides
from training.run import train

torch.set_num_threads(1)


shards = shards_fixture(rows={"train": 64, "val": 24, "test": 40}, row_group_size=10, files_per_split=2)


@pytest.fixture
def image_cfg(train_cfg, shards):
    """A tiny image model's run on the shards, logging every step: ``image_cfg("+experiment=mcc", ...)``."""
    return lambda *overrides: train_cfg(*TINY_IMAGE, "trainer.log_every_n_steps=1", "model.optimizer.lr=0.05",
                                        *overrides, shards=shards)


@pytest.mark.parametrize("experiment", ["mcc", "mlc", "her"])
def test_experiment_configs_compose_and_instantiate(tmp_path, image_cfg, experiment):
    cfg = image_cfg(f"+experiment={experiment}")
    assert cfg.task_name == experiment
    assert cfg.model._target_.endswith(experiment.upper())
    assert cfg.model.optimizer.momentum == 0.9 and cfg.model.optimizer.weight_decay == 1e-4
    assert "experiment" not in OmegaConf.to_container(cfg)
    for trainer in ("gpu", "ddp", "ddp_sim", "cpu"):
        c = image_cfg(f"+experiment={experiment}", f"trainer={trainer}")
        assert c.trainer._target_ == "pytorch_lightning.Trainer"
    ddp = image_cfg("+experiment=mcc", "trainer=ddp", "trainer.devices=8",
                      "trainer.num_nodes=2")
    assert (ddp.trainer.strategy, ddp.trainer.devices, ddp.trainer.num_nodes) == ("ddp", 8, 2)
    settled = trainer_overrides(ddp.trainer, Launch("lightning"), cuda=True, bf16=True)
    assert settled["precision"] == "bf16-mixed" and settled["benchmark"] is True
    assert ddp.trainer.sync_batchnorm is False
    # The default trainer uses the GPUs when there are any, the CPU here.
    auto = image_cfg("+experiment=mcc")
    assert auto.trainer.accelerator == "auto" and auto.trainer.devices == "auto"
    assert trainer_overrides(auto.trainer, Launch("lightning"), cuda=False, bf16=False) == {
        "num_nodes": 1, "precision": "32-true"}
    # +debug after +experiment: debug settings win.
    dbg = image_cfg("+experiment=mcc", "+debug=fdr")
    assert dbg.trainer.fast_dev_run is True and dbg.trainer.max_epochs == 1


def test_eval_config_composes():
    cfg = compose("eval", "embeddings_dir=/tmp/x")
    assert cfg.evaluation.ks == [1, 10, 50] and cfg.evaluation.min_images == 10
    sample = compose("train", "+experiment=mcc", "+sample=image")
    assert sample.task_name == "mcc" and sample.model.backbone.name == "mobilenet_v3_small"
    assert sample.data.crop == 64 and sample.model._target_ == "training.models.mcc.MCC"


@pytest.mark.parametrize("experiment", ["mcc", "mlc", "her"])
def test_fast_dev_run(tmp_path, image_cfg, experiment):
    cfg = image_cfg(f"+experiment={experiment}", "+debug=fdr", "evaluate=false")
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["val/loss"])
    # Export still runs (current weights: fast_dev_run keeps no checkpoint).
    m = EmbeddingsManifest.read(tmp_path / "outputs" / "debug" / "embeddings")
    assert m.model == experiment.upper()


@pytest.mark.slow
def test_train_export_evaluate_and_resume(tmp_path, shards, image_cfg):
    cfg = image_cfg("+experiment=mcc", "trainer.max_epochs=2")
    metrics = train(cfg)
    run_dir = tmp_path / "outputs" / "mcc"
    assert (run_dir / "checkpoints" / "best.ckpt").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert metrics["train/images_per_s"] > 0
    for name in ["tagging/A@1", "tagging/A@10", "tagging/pct_pred", "tagging/pct_cpred",
                 "tagging/A@10_noplaces", "retrieval/P@10", "retrieval/P@10_1km",
                 "retrieval/P@10_2500km", "retrieval/P@10_agnostic", "upper_bound/P@10_25km"]:
        assert name in metrics, name
        assert 0.0 <= metrics[name] <= 100.0
    assert metrics["retrieval/P@10_agnostic"] <= metrics["upper_bound/P@10_agnostic"]

    # Export: every row of every split once, tag embeddings = MCC's output layer.
    emb = run_dir / "embeddings"
    manifest = EmbeddingsManifest.read(emb)
    shards_manifest = read_manifest(shards)
    for split in ("train", "val", "test"):
        assert manifest.splits[split]["rows"] == shards_manifest.splits[split].rows
        ids = np.concatenate([pq.read_table(emb / f["path"], columns=["photo_id"]).column(0).to_numpy()
                              for f in manifest.splits[split]["files"]])
        assert np.unique(ids).size == ids.size == shards_manifest.splits[split].rows
    tags = pq.read_table(emb / "tags.parquet")
    assert tags.num_rows == shards_manifest.vocab_size and manifest.dim == 300
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    w = best["state_dict"]["classifier.weight"].numpy()
    got = np.asarray(tags.column("embedding").combine_chunks().flatten()).reshape(-1, 300)
    np.testing.assert_allclose(got, w, rtol=1e-6)

    # MLflow: a training run with per-epoch metrics and config, an evaluation run with the metrics.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    train_run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    assert len(client.get_metric_history(train_run.info.run_id, "val/loss")) == 2
    assert train_run.data.params["model._target_"] == "training.models.mcc.MCC"
    assert train_run.data.tags["best_checkpoint"].endswith("best.ckpt")
    assert (train_run.data.tags["family"], train_run.data.tags["tasks"]) == ("mcc", "tagging,retrieval")
    assert train_run.data.tags["serving.image_model"] == train_run.data.tags["best_checkpoint"]   # what serves it
    assert train_run.data.tags["serving.vocabulary"] == str(emb.resolve() / "tags.parquet")
    eval_run = client.get_run(train_run.data.tags["eval_run_id"])
    assert eval_run.data.tags["family"] == "mcc"
    assert eval_run.data.metrics["tagging/A_at_10"] == pytest.approx(metrics["tagging/A@10"])
    assert "retrieval/P_at_10_750km" in eval_run.data.metrics
    assert eval_run.data.tags["embeddings_export_id"] == manifest.export_id != ""
    assert train_run.data.tags["backbone_weights"] == "random initialisation"

    # train=false evaluates a checkpoint into an export of its own: the training run's export, which
    # LocSens reads and evaluation runs refer to, stays as it was.
    with pytest.raises(SetupError, match="ckpt_path"):
        train(image_cfg("+experiment=mcc", "train=false"))
    best_ckpt = run_dir / "checkpoints" / "best.ckpt"
    again = train(image_cfg("+experiment=mcc", "train=false", f"ckpt_path={best_ckpt}"))
    assert EmbeddingsManifest.read(emb).export_id == manifest.export_id
    assert again["tagging/A@10"] == pytest.approx(metrics["tagging/A@10"])
    assert [p.name for p in (run_dir / "evaluated").iterdir()][0].startswith("best-")

    # Resume from last.ckpt: the epoch counter continues instead of starting over.
    cfg2 = image_cfg("+experiment=mcc", "trainer.max_epochs=3", "resume=true",
                       "export=false", "evaluate=false")
    seen = []

    class Epochs(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.current_epoch)

    with open_dict(cfg2):
        cfg2.callbacks.epochs = {"_target_": f"{__name__}.Epochs"}
    globals()["Epochs"] = Epochs
    train(cfg2)
    assert seen == [2]


@pytest.mark.slow
def test_ddp_spawn_every_row_once_per_epoch(tmp_path, shards, image_cfg):
    cfg = image_cfg("+experiment=mcc", "trainer=ddp_sim", "trainer.max_epochs=2",
                      "data.num_workers=2", "data.batch_size=6", "evaluate=false", "torch_threads=1")
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": "helpers.callbacks.RecordIds", "out_dir": str(tmp_path)}
    train(cfg)
    train_ids = np.concatenate([pq.read_table(p, columns=["photo_id"]).column(0).to_numpy()
                                for p in sorted((shards / "train").glob("*.parquet"))])
    orders = []
    for epoch in (0, 1):
        parts = [json.loads((tmp_path / f"ids-e{epoch}-r{r}.json").read_text()) for r in (0, 1)]
        ids = parts[0]["ids"] + parts[1]["ids"]
        assert sorted(ids) == sorted(train_ids.tolist()), f"epoch {epoch}"
        assert parts[0]["batches"] == parts[1]["batches"]
        orders.append(ids)
    assert orders[0] != orders[1]  # reshuffled with seed + epoch
    # Export under DDP: one file per rank and split, all rows once.
    manifest = EmbeddingsManifest.read(tmp_path / "outputs" / "mcc" / "embeddings")
    assert len(manifest.splits["test"]["files"]) == 2
    assert manifest.splits["train"]["rows"] == train_ids.size


def test_a_sample_mixin_of_another_model_family_is_a_clear_error(tmp_path, shards):
    """LocSens's CPU settings on MCC: the run stops naming the setting it does not take, and the mixin that fits."""
    cfg = compose("train", "+experiment=mcc", "+sample=locsens", f"paths.root_dir={tmp_path}",
                  f"paths.shards_dir={shards}")
    with pytest.raises(SetupError, match="negative_pool.*check the data.* settings.*\\+sample=image goes with mcc"):
        train(cfg)


def test_the_compile_switch_trains_a_compiled_backbone_that_scores_as_the_plain_one(tmp_path, image_cfg):
    """model.compile=true: the backbone goes through torch.compile (inductor, on this CPU) for the
    fit; the checkpoint's keys are the plain module's, so it loads without compile, and the
    compiled backbone's features equal the plain one's on the same weights."""
    from torch._dynamo.utils import counters

    from training.models.mcc import MCC

    counters.clear()
    metrics = train(image_cfg("+experiment=mcc", "trainer.max_epochs=1", "model.compile=true", "evaluate=false",
                              "export=false"))
    assert counters["stats"]["unique_graphs"] > 0 and np.isfinite(metrics["best_val_loss"])
    state = torch.load(tmp_path / "outputs" / "mcc" / "checkpoints" / "best.ckpt", map_location="cpu",
                       weights_only=True)
    assert not any("_orig_mod" in k for k in state["state_dict"])
    plain = MCC(num_tags=state["state_dict"]["classifier.weight"].shape[0], optimizer=None,
                **{k: v for k, v in state["hyper_parameters"].items() if k in ("backbone", "embedding_dim")})
    plain.load_state_dict(state["state_dict"])
    plain.eval()
    images = torch.randint(0, 256, (4, 32, 32, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = plain.features(images)
        plain.backbone.compile()
        got = plain.features(images)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_a_run_decoding_on_the_device_trains_as_the_workers_decode(tmp_path, image_cfg):
    """data.decode=device through Lightning (the data module decodes each batch on the training
    device, here the CPU, in transfer_batch_to_device): the same pixels, so the same losses and export."""
    runs = {}
    for decode in ("cpu", "device"):
        cfg = image_cfg("+experiment=mcc", "trainer.max_epochs=1", "trainer.deterministic=true", "evaluate=false",
                        f"data.decode={decode}", f"paths.root_dir={tmp_path / decode}")
        runs[decode] = train(cfg)
    assert runs["device"]["best_val_loss"] == runs["cpu"]["best_val_loss"]
    exports = [pq.read_table(tmp_path / d / "outputs" / "mcc" / "embeddings" / "images" / "test").sort_by("photo_id")
               for d in ("cpu", "device")]
    assert exports[0].column("embedding").equals(exports[1].column("embedding"))
