"""Shortlist and rerank (evaluation.mode=rerank) against exact LocSens scoring on small inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.embeddings import DIM, N, V, place_names_mask, tiny_net, tiny_split

from common import metrics as M
from training.evaluate.locsens import (autocast, evaluate_locsens, reranked_images, reranked_tags, retrieve_images,
                                       tag_images_masked)
from training.evaluate.rerank import PlacePrior, RerankSettings, dedupe, recall_of, retrieval_candidates
from training.index.ann import AnnIndex, AnnSettings, normalised
from training.index.spatial import SpatialIndex


def test_rerank_with_everything_shortlisted_equals_exact(tmp_path):
    split, tags = tiny_split(tmp_path)
    net = tiny_net()
    common = dict(place_mask=place_names_mask(), min_images=3, seed=4, ks=(1, 10, 20), pairs=500)
    exact = evaluate_locsens(net, split, tags, **common)
    everything = {"tags": V, "images": N, "nearby": 0, "index": "flat"}
    rerank = evaluate_locsens(net, split, tags, mode="rerank", rerank=everything, **common)
    assert rerank.keys() == exact.keys()
    for name, value in exact.items():
        assert rerank[name] == pytest.approx(value, nan_ok=True), name


def test_reranked_rankings_equal_exact_rankings_when_nothing_is_cut():
    net = tiny_net(1)
    images, tag_table, loc = torch.randn(30, DIM), torch.randn(V, DIM), torch.rand(30, 2)
    masks = [None, torch.as_tensor(place_names_mask())]
    exact = tag_images_masked(net, images, loc, tag_table, 10, 200, masks)
    reranked = reranked_tags(net, images, loc, tag_table, 10, 200, masks, shortlist=V)
    for e, r in zip(exact, reranked):
        assert np.array_equal(e, r)
    q_tags, q_loc = torch.tensor([0, 5, 5, 17]), torch.rand(4, 2)
    exact = retrieve_images(net, images, q_tags, q_loc, tag_table, 10, 100)
    everything = np.tile(np.arange(30), (4, 1))[:, ::-1].copy()      # any order
    assert np.array_equal(reranked_images(net, images, q_tags, q_loc, tag_table, everything, 10, 100), exact)


def test_a_shortlist_ranks_only_its_candidates_and_finds_their_best():
    net = tiny_net(2)
    images, tag_table, loc = torch.randn(20, DIM), torch.randn(V, DIM), torch.rand(20, 2)
    got = reranked_tags(net, images, loc, tag_table, 5, 1000, [None], shortlist=8)[0]
    cos = normalised(images.numpy()) @ normalised(tag_table.numpy()).T
    shortlist = np.argsort(-cos, axis=1)[:, :8]
    with torch.no_grad():
        full = torch.stack([net(images[i].expand(V, -1), tag_table, loc[i].expand(V, -1)) for i in range(20)]).numpy()
    best = np.take_along_axis(shortlist, np.argsort(-np.take_along_axis(full, shortlist, 1), axis=1)[:, :5], 1)
    assert np.array_equal(got, best)


def test_one_scoring_of_the_united_shortlists_serves_both_tag_masks():
    net = tiny_net(4)
    images, tag_table, loc = torch.randn(20, DIM), torch.randn(V, DIM), torch.rand(20, 2)
    places = place_names_mask()
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
    for exclude in (None, place_names_mask()):
        got = prior.top_tags(q_lat, q_lon, photos=12, k=6, exclude=exclude, chunk=3)
        for i in range(7):
            near = np.argsort(M.haversine_km(q_lat[i], q_lon[i], lat, lon))[:12]
            counts = Counter(t for r in near for t in truth.row(r) if exclude is None or not exclude[t])
            ranked = sorted(counts, key=lambda t: (-counts[t], t))[:6]
            assert got[i].tolist() == ranked + [-1] * (6 - len(ranked))


def test_rerank_with_place_tags_adds_the_places_candidates(tmp_path):
    split, tags = tiny_split(tmp_path)
    net = tiny_net(6)
    prior = PlacePrior(split["latitude"], split["longitude"], split["truth"], V)
    common = dict(place_mask=place_names_mask(), min_images=3, seed=4, ks=(1, 5), pairs=500, mode="rerank")
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


def test_precision_auto_is_bf16_on_gpus_and_32_on_the_cpu():
    from training.evaluate.locsens import scoring_precision

    assert scoring_precision("auto", torch.device("cpu")) == "32" and scoring_precision("bf16", "cpu") == "bf16"
    if torch.cuda.is_available():
        assert scoring_precision("auto", "cuda") == ("bf16" if torch.cuda.is_bf16_supported() else "32")


def test_bf16_exact_scoring_keeps_float32s_rankings_on_a_trained_model(tmp_path):
    """bf16 scoring (every pair in bf16, each query's best again in float32) against float32 on a
    LocSens trained on a synthetic export: >= 99% of the top-10 tags and images the same, every
    metric within 0.2 pt. bf16 alone (one pass) changes more of them."""
    from helpers.config import CPU, TINY_LOCSENS, compose, paths
    from helpers.embeddings import write_embeddings

    from training.data.embeddings import LocSensDataModule
    from training.evaluate.locsens import _as, exact_images, exact_tags, tag_images
    from training.models.locations import normalise_location
    from training.models.locsens import LocSensNet
    from training.run import train

    export = write_embeddings(tmp_path / "export", rows=(("train", 1200), ("val", 120), ("test", 2000)))
    train(compose("train", "+experiment=locsens_raw", *TINY_LOCSENS, *CPU, "trainer.max_epochs=3", "evaluate=false",
                  *paths(tmp_path / "run", embeddings=export)))
    state = torch.load(tmp_path / "run/outputs/locsens_raw/checkpoints/best.ckpt", map_location="cpu",
                       weights_only=True)
    hp = state["hyper_parameters"]
    net = LocSensNet(hp["input_dim"], hp["modality_dim"], hp["hidden"], hp["groups"], hp["norm_eps"]).eval()
    net.load_state_dict({k[4:]: v for k, v in state["state_dict"].items() if k.startswith("net.")})
    dm = LocSensDataModule(str(export))
    split, tag_table = dm.split_arrays("test"), dm.tag_embeddings()
    images, tags = _as(split["embedding"], "cpu"), _as(tag_table, "cpu")
    loc = normalise_location(_as(split["latitude"], "cpu"), _as(split["longitude"], "cpu"))

    def agreement(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))

    tagged = {p: exact_tags(net, images, loc, tags, 10, 1 << 20, [None], None, p)[0] for p in ("32", "bf16")}
    assert agreement(tagged["32"], tagged["bf16"]) >= 0.99
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        one_pass = tag_images(net, images, loc, tags, 10)
    assert agreement(tagged["32"], one_pass) < agreement(tagged["32"], tagged["bf16"])
    queries = torch.arange(tags.shape[0]).repeat(5)
    where = loc[torch.randperm(len(loc), generator=torch.Generator().manual_seed(0))[:len(queries)]]
    found = {p: exact_images(net, images, queries, where, tags, 10, 1 << 20, None, p) for p in ("32", "bf16")}
    assert agreement(found["32"], found["bf16"]) >= 0.99
    full = evaluate_locsens(net, split, tag_table, min_images=3, ks=(1, 10), precision="32")
    half = evaluate_locsens(net, split, tag_table, min_images=3, ks=(1, 10), precision="bf16")
    assert half.keys() == full.keys()
    assert {k: abs(half[k] - full[k]) for k in full if abs(half[k] - full[k]) > 0.2 and "seconds" not in k} == {}




def test_a_shortlist_shorter_than_k_leaves_minus_one_not_a_real_id():
    """Rows with fewer candidates than k: the empty slots stay -1 (used[-1] would be the last
    candidate of the batch, a real photo or tag)."""
    from training.evaluate.locsens import _rank_shortlists

    net = tiny_net(2)
    gallery = torch.randn(30, DIM)
    query = net.tag_part(torch.randn(2, DIM)) + net.location_part(torch.zeros(2, 2))
    candidates = np.array([[3, 7, -1, -1, -1], [20, 21, 22, 25, 29]])
    ranked = _rank_shortlists(net, query, lambda used: net.image_part(gallery[used]), candidates, 4, 1000)[0]
    assert ranked.shape == (2, 4)
    assert sorted(ranked[0][:2].tolist()) == [3, 7] and ranked[0][2:].tolist() == [-1, -1]
    assert set(ranked[1].tolist()) <= {20, 21, 22, 25, 29} and -1 not in ranked[1]
