"""Evaluation split over the ranks of a run: 2 real processes (gloo) give the metrics of one, and a
``training.run`` under Lightning's DDP launcher evaluates on both ranks."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.embeddings import DIM, V, place_names_mask, tiny_net, write_embeddings
from helpers import ROOT
from helpers.servers import free_port

from common import metrics as M
from training.data.embeddings import LocSensDataModule
from training.evaluate.factorised import evaluate_factorised
from training.evaluate.locsens import evaluate_locsens
from training.models.factorised import FactorisedNet
from training.ranks import Ranks


def _rank_main(rank: int, world: int, port: int, directory: str, out: str, kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        assert Ranks.current() == Ranks(rank, world)
        dm = LocSensDataModule(directory)
        metrics = _evaluate_model(kwargs["mode"], dm, kwargs)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(metrics, f)
    finally:
        dist.destroy_process_group()


def _evaluate_model(mode: str, dm: LocSensDataModule, kwargs: dict) -> dict:
    """LocSens exact or reranked, or the factorised model, on the test split."""
    if mode == "factorised":
        torch.manual_seed(0)
        net = FactorisedNet(V, input_dim=DIM).eval()
        return evaluate_factorised(net, dm.split_arrays("test"), dm.tag_embeddings(), **kwargs)
    return evaluate_locsens(tiny_net(), dm.split_arrays("test"), dm.tag_embeddings(), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "rerank", "factorised"])
def test_two_ranks_give_the_metrics_of_one(tmp_path, mode):
    directory = write_embeddings(tmp_path / "emb", dim=DIM, num_tags=V, rows=(("test", 101),))   # uneven shares
    kwargs = dict(place_mask=place_names_mask().tolist(), min_images=3, seed=4, ks=[1, 10], pairs=300, mode=mode,
                  rerank={"tags": 8, "images": 20, "nearby": 10, "index": "flat"})
    out = str(tmp_path / "metrics")
    mp.start_processes(_rank_main, args=(2, free_port(), str(directory), out, kwargs), nprocs=2, join=True,
                       start_method="spawn")
    two = json.loads(open(f"{out}.0").read())
    assert json.loads(open(f"{out}.1").read()) == {}        # rank 1 reports nothing
    dm = LocSensDataModule(str(directory))
    one = _evaluate_model(mode, dm, kwargs)
    assert one[M.QUERIES] > 20 and "tagging/A@10_noplaces" in one
    assert two == pytest.approx(one, nan_ok=True)


# --- after fit, under Lightning's own DDP launcher ---------------------------------------------------

@pytest.mark.slow
def test_ddp_run_evaluates_on_both_ranks_like_one_process(tmp_path):
    """``training.run`` under ``strategy=ddp`` (Lightning re-launches the command for rank 1): both
    ranks evaluate after fit, and rank 0's metrics equal a one-process evaluation of the same
    checkpoint (``train=false``)."""
    import subprocess
    import sys

    emb = write_embeddings(tmp_path / "emb")
    repo = ROOT
    common = [f"paths.root_dir={tmp_path}", f"data.embeddings_dir={emb}", "run_dir=" + str(tmp_path / "run"),
              f"paths.mlflow_tracking_uri=sqlite:///{tmp_path}/mlruns.db", "model.input_dim=32",
              "model.modality_dim=32", "model.hidden=[64,32]", "model.groups=8", "data.batch_size=50",
              "data.num_workers=0", "data.persistent_workers=false", "data.shards_dir=null",
              "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0",
              "evaluation.min_images=5", "torch_threads=1"]
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def run(*args: str) -> dict[str, float]:
        proc = subprocess.run([sys.executable, "-m", "training.run", "+experiment=locsens_raw", *common, *args],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / "run" / "metrics.json").read_text())

    two = run("trainer=ddp_sim", "trainer.strategy=ddp", "trainer.max_epochs=1")
    assert two["eval/ranks"] == 2.0          # rank 0 gathered rank 1's share
    best = str(tmp_path / "run" / "checkpoints" / "best.ckpt")
    one = run("train=false", f"ckpt_path={best}")
    assert one["eval/ranks"] == 1.0
    names = [n for n in one if n.startswith(("tagging/", "retrieval/"))]
    assert len(names) > 10
    assert {n: two[n] for n in names} == pytest.approx({n: one[n] for n in names})
