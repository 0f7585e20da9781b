"""Evaluation at scale: shortlist-and-rerank against exact, the indexes against brute force, and
evaluation split over 2 real processes (gloo) against one."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from embeddings_fixture import write_embeddings
from servers import free_port

from common import metrics as M
from training.data.embeddings import LocSensDataModule
from training.evaluate.locsens import (autocast, evaluate_locsens, reranked_images, reranked_tags, retrieve_images,
                                       tag_images_masked)
from training.evaluate.factorised import evaluate_factorised
from training.evaluate.ranks import Ranks
from training.evaluate.rerank import PlacePrior, RerankSettings, dedupe, recall_of, retrieval_candidates
from training.index.ann import AnnIndex, AnnSettings, normalised
from training.index.spatial import SpatialIndex, check_coordinates
from training.models.factorised import FactorisedNet
from training.models.locsens import LocSensNet

V, N, DIM = 24, 80, 16


def _net(seed: int = 0) -> LocSensNet:
    torch.manual_seed(seed)
    return LocSensNet(input_dim=DIM, modality_dim=32, hidden=(64, 32), groups=8).eval()


def _split(tmp_path):
    directory = write_embeddings(tmp_path / "emb", dim=DIM, num_tags=V, rows=(("test", N),))
    dm = LocSensDataModule(str(directory))
    return dm.split_arrays("test"), dm.tag_embeddings()


def _places() -> np.ndarray:
    places = np.zeros(V, dtype=bool)
    places[:6] = True
    return places


# --- shortlist and rerank ------------------------------------------------------------------------

def test_rerank_with_everything_shortlisted_equals_exact(tmp_path):
    split, tags = _split(tmp_path)
    net = _net()
    common = dict(place_mask=_places(), min_images=3, seed=4, ks=(1, 10, 20), pairs=500)
    exact = evaluate_locsens(net, split, tags, **common)
    everything = {"tags": V, "images": N, "nearby": 0, "index": "flat"}
    rerank = evaluate_locsens(net, split, tags, mode="rerank", rerank=everything, **common)
    assert rerank.keys() == exact.keys()
    for name, value in exact.items():
        assert rerank[name] == pytest.approx(value, nan_ok=True), name


def test_reranked_rankings_equal_exact_rankings_when_nothing_is_cut():
    net = _net(1)
    images, tag_table, loc = torch.randn(30, DIM), torch.randn(V, DIM), torch.rand(30, 2)
    masks = [None, torch.as_tensor(_places())]
    exact = tag_images_masked(net, images, loc, tag_table, 10, 200, masks)
    reranked = reranked_tags(net, images, loc, tag_table, 10, 200, masks, shortlist=V)
    for e, r in zip(exact, reranked):
        assert np.array_equal(e, r)
    q_tags, q_loc = torch.tensor([0, 5, 5, 17]), torch.rand(4, 2)
    exact = retrieve_images(net, images, q_tags, q_loc, tag_table, 10, 100)
    everything = np.tile(np.arange(30), (4, 1))[:, ::-1].copy()      # any order
    assert np.array_equal(reranked_images(net, images, q_tags, q_loc, tag_table, everything, 10, 100), exact)


def test_a_shortlist_ranks_only_its_candidates_and_finds_their_best():
    net = _net(2)
    images, tag_table, loc = torch.randn(20, DIM), torch.randn(V, DIM), torch.rand(20, 2)
    got = reranked_tags(net, images, loc, tag_table, 5, 1000, [None], shortlist=8)[0]
    cos = normalised(images.numpy()) @ normalised(tag_table.numpy()).T
    shortlist = np.argsort(-cos, axis=1)[:, :8]
    with torch.no_grad():
        full = torch.stack([net(images[i].expand(V, -1), tag_table, loc[i].expand(V, -1)) for i in range(20)]).numpy()
    best = np.take_along_axis(shortlist, np.argsort(-np.take_along_axis(full, shortlist, 1), axis=1)[:, :5], 1)
    assert np.array_equal(got, best)


def test_one_scoring_of_the_united_shortlists_serves_both_tag_masks():
    net = _net(4)
    images, tag_table, loc = torch.randn(20, DIM), torch.randn(V, DIM), torch.rand(20, 2)
    places = _places()
    ranked = reranked_tags(net, images, loc, tag_table, 5, 1000, [None, torch.as_tensor(places)], shortlist=5)
    cos = normalised(images.numpy()) @ normalised(tag_table.numpy()).T
    with torch.no_grad():
        full = torch.stack([net(images[i].expand(V, -1), tag_table, loc[i].expand(V, -1)) for i in range(20)]).numpy()
    for i in range(20):
        top_all = np.argsort(-cos[i])[:5]
        top_other = np.argsort(-np.where(places, -np.inf, cos[i]))[:5]
        union = np.union1d(top_all, top_other)
        best = union[np.argsort(-full[i, union])]
        assert ranked[0][i].tolist() == best[:5].tolist()
        assert ranked[1][i].tolist() == best[~places[best]][:5].tolist()


def test_place_prior_ranks_the_tags_of_the_nearest_photos():
    from collections import Counter

    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-60, 60, 300), rng.uniform(-170, 170, 300)
    truth = M.TagSets.from_lists([rng.choice(V, rng.integers(0, 4), replace=False) for _ in range(300)])
    prior = PlacePrior(lat, lon, truth, V)
    q_lat, q_lon = rng.uniform(-60, 60, 7), rng.uniform(-170, 170, 7)
    for exclude in (None, _places()):
        got = prior.top_tags(q_lat, q_lon, photos=12, k=6, exclude=exclude, chunk=3)
        for i in range(7):
            near = np.argsort(M.haversine_km(q_lat[i], q_lon[i], lat, lon))[:12]
            counts = Counter(t for r in near for t in truth.row(r) if exclude is None or not exclude[t])
            ranked = sorted(counts, key=lambda t: (-counts[t], t))[:6]
            assert got[i].tolist() == ranked + [-1] * (6 - len(ranked))


def test_rerank_with_place_tags_adds_the_places_candidates(tmp_path):
    split, tags = _split(tmp_path)
    net = _net(6)
    prior = PlacePrior(split["latitude"], split["longitude"], split["truth"], V)
    common = dict(place_mask=_places(), min_images=3, seed=4, ks=(1, 5), pairs=500, mode="rerank")
    with pytest.raises(ValueError, match="place_tags needs"):
        evaluate_locsens(net, split, tags, rerank={"tags": 5, "place_tags": 3}, **common)
    plain = evaluate_locsens(net, split, tags, rerank={"tags": 5, "index": "flat"}, **common)
    placed = evaluate_locsens(net, split, tags, rerank={"tags": 5, "place_tags": V, "place_photos": N, "index": "flat"},
                              place_prior=prior, **common)
    # Every tag some test photo carries is a candidate now: the same as exact when all tags occur.
    exact = evaluate_locsens(net, split, tags, **{k: v for k, v in common.items() if k != "mode"})
    assert np.unique(split["truth"].values).size == V
    assert {k: placed[k] for k in exact if k.startswith("tagging/")} == \
        pytest.approx({k: exact[k] for k in exact if k.startswith("tagging/")})
    assert plain.keys() == placed.keys()


def test_retrieval_candidates_unite_tag_and_place_without_duplicates():
    rng = np.random.default_rng(0)
    gallery = normalised(rng.normal(size=(50, DIM)))
    lat, lon = rng.uniform(-60, 60, 50), rng.uniform(-170, 170, 50)
    ann, spatial = AnnIndex.build(gallery, AnnSettings(kind="flat")), SpatialIndex(lat, lon)
    tag_vectors = rng.normal(size=(V, DIM)).astype(np.float32)
    q_tags, q_lat, q_lon = np.array([3, 3, 7]), lat[[0, 1, 2]], lon[[0, 1, 2]]
    cand = retrieval_candidates(ann, spatial, tag_vectors, q_tags, q_lat, q_lon,
                                RerankSettings(images=10, nearby=10, index="flat"))
    assert cand.shape == (3, 20)
    for row, t, la, lo in zip(cand, q_tags, q_lat, q_lon):
        kept = row[row >= 0]
        assert len(set(kept)) == kept.size
        by_tag = set(np.argsort(-(gallery @ normalised(tag_vectors[t:t + 1])[0]))[:10])
        by_place = set(np.argsort(M.haversine_km(la, lo, lat, lon))[:10])
        assert set(kept) == by_tag | by_place


def test_dedupe_and_recall():
    assert dedupe(np.array([[3, 1, 3, 2, 1]])).tolist() == [[3, 1, -1, 2, -1]]
    assert recall_of(np.array([[1, 2], [3, 4]]), np.array([[2, 9], [3, 4]]), k=2) == pytest.approx(75.0)


def test_bad_settings_say_which():
    with pytest.raises(ValueError, match="unknown setting.*shortlist"):
        RerankSettings.from_config({"shortlist": 5})
    with pytest.raises(ValueError, match="index kind"):
        AnnSettings(kind="annoy")
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        autocast(torch.device("cpu"), "16-mixed")
    with pytest.raises(ValueError, match="evaluation.precision"):
        autocast(torch.device("cpu"), "8")


def test_bf16_scoring_runs_and_mostly_agrees(tmp_path):
    split, tags = _split(tmp_path)
    net = _net(3)
    full = evaluate_locsens(net, split, tags, min_images=3, ks=(1, 10), precision="32")
    half = evaluate_locsens(net, split, tags, min_images=3, ks=(1, 10), precision="bf16")
    assert half.keys() == full.keys()
    assert abs(half["tagging/A@10"] - full["tagging/A@10"]) <= 20.0


# --- indexes against brute force --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_image_index_returns_the_brute_force_neighbours(kind, tmp_path):
    rng = np.random.default_rng(1)
    x = normalised(rng.normal(size=(400, 32)))
    q = normalised(rng.normal(size=(25, 32)))
    settings = AnnSettings(kind=kind, ef_search=400, ivf_lists=8, nprobe=8)   # small set: search it all
    index = AnnIndex.build(x, settings)
    index.save(tmp_path)
    scores, ids = AnnIndex.load(tmp_path).search(q, 10)
    brute = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert np.array_equal(ids, brute)
    assert np.allclose(scores, np.take_along_axis(q @ x.T, brute, 1), atol=1e-5)


def test_spatial_index_returns_the_nearest_photos():
    rng = np.random.default_rng(2)
    lat, lon = np.degrees(np.arcsin(rng.uniform(-1, 1, 600))), rng.uniform(-180, 180, 600)
    index = SpatialIndex(lat, lon)
    q_lat, q_lon = np.array([41.39, -33.9, 89.0, 0.0]), np.array([2.17, 151.2, -179.9, 180.0])
    ids, km = index.nearest(q_lat, q_lon, 7)
    for i in range(4):
        d = M.haversine_km(q_lat[i], q_lon[i], lat, lon)
        assert np.array_equal(ids[i], np.argsort(d)[:7])
        assert np.allclose(km[i], np.sort(d)[:7], rtol=1e-6)


def test_coordinates_out_of_range_are_named():
    with pytest.raises(ValueError, match="latitude 91"):
        check_coordinates([10, 91], [0, 0])
    with pytest.raises(ValueError, match="longitude -181"):
        check_coordinates([0], [-181])
    with pytest.raises(ValueError, match="latitude nan"):
        check_coordinates([float("nan")], [0])


# --- 2 ranks = 1 rank ---------------------------------------------------------------------------------

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
    return evaluate_locsens(_net(), dm.split_arrays("test"), dm.tag_embeddings(), **kwargs)


@pytest.mark.parametrize("mode", ["exact", "rerank", "factorised"])
def test_two_ranks_give_the_metrics_of_one(tmp_path, mode):
    directory = write_embeddings(tmp_path / "emb", dim=DIM, num_tags=V, rows=(("test", 101),))   # uneven shares
    kwargs = dict(place_mask=_places().tolist(), min_images=3, seed=4, ks=[1, 10], pairs=300, mode=mode,
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
    from pathlib import Path

    emb = write_embeddings(tmp_path / "emb")
    repo = Path(__file__).resolve().parents[1]
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
