"""The factorised location-sensitive model: its factorised scoring equals brute-force triplet
scoring (tagging, retrieval, the whole evaluation), its losses, and a real run through training.run."""
from __future__ import annotations


import mlflow
import numpy as np
import pytest
import torch
from helpers.config import train_config
from helpers.embeddings import write_embeddings

from common import metrics as M
from training.evaluate.factorised import evaluate_factorised
from training.models.factorised import FactorisedNet, retrieval_loss, tagging_loss
from training.models.locations import normalise_location
from training.run import train

torch.set_num_threads(1)


def random_net(interaction: bool, num_tags: int = 30, dim: int = 16, seed: int = 0) -> FactorisedNet:
    """A net with every parameter random (the zero-initialised ones too), in float64: exact comparisons."""
    torch.manual_seed(seed)
    net = FactorisedNet(num_tags, dim, location_dim=8, hidden=[16], frequencies=[1, 4], interaction=interaction)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net.double().eval()


def random_inputs(n: int, num_tags: int = 30, dim: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, dim, generator=g, dtype=torch.float64)
    table = torch.randn(num_tags, dim, generator=g, dtype=torch.float64)
    lat = torch.rand(n, generator=g, dtype=torch.float64) * 180 - 90
    lon = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    return images, table, normalise_location(lat, lon), lat, lon


@pytest.mark.parametrize("interaction", [False, True])
def test_tagging_by_one_matrix_product_equals_brute_force(interaction):
    net = random_net(interaction)
    images, table, loc, _, _ = random_inputs(12)
    v = table.shape[0]
    with torch.no_grad():
        brute = net(images[:, None, :], torch.arange(v)[None, :], loc[:, None, :], table)            # (N, V)
        fast = net.tag_queries(images, loc) @ net.tag_keys(table).T
        offset = net.tag_offsets(images, loc)
    torch.testing.assert_close(fast + offset[:, None], brute)        # equal up to the per-image constant
    assert torch.equal(fast.topk(10).indices, brute.topk(10).indices)
    assert offset.abs().max() > 1e-3                                  # the constant is not trivially 0


@pytest.mark.parametrize("interaction", [False, True])
def test_retrieval_by_inner_product_search_ranks_like_brute_force(interaction):
    net = random_net(interaction)
    images, table, loc, _, _ = random_inputs(40)
    q_tags, q_loc = torch.tensor([0, 3, 3, 29]), loc[[5, 5, 17, 2]]
    with torch.no_grad():
        brute = net(images[None, :, :], q_tags[:, None], q_loc[:, None, :], table)                   # (Q, N)
        fast = net.retrieval_queries(table[q_tags], q_loc) @ net.image_keys(images).T
        offset = net.retrieval_offsets(q_tags, q_loc)
    torch.testing.assert_close(fast + offset[:, None], brute)
    assert torch.equal(fast.topk(10).indices, brute.topk(10).indices)
    # The location changes the ranking (the image-place term), not only a constant.
    assert not torch.equal(fast[1].topk(10).indices, fast[2].topk(10).indices)


def brute_force_metrics(net: FactorisedNet, split: dict, table: torch.Tensor, place_mask: np.ndarray,
                        min_images: int) -> dict[str, float]:
    """The protocol scored triplet by triplet with ``forward``: every (image, tag), every (query, image)."""
    truth, v = split["truth"], table.shape[0]
    images = torch.as_tensor(split["embedding"])
    loc = normalise_location(torch.as_tensor(split["latitude"]), torch.as_tensor(split["longitude"]))
    with torch.no_grad():
        scores = torch.stack([net(images[i].expand(v, -1), torch.arange(v), loc[i].expand(v, -1), table)
                              for i in range(images.shape[0])])
    out = {"eval/images": float(len(truth)), "eval/tags": float(v)}
    out.update(M.tagging_metrics(scores.topk(10).indices.numpy(), truth, v, [1, 10]))
    masked = scores.masked_fill(torch.as_tensor(place_mask), float("-inf"))
    out.update(M.tagging_metrics(masked.topk(10).indices.numpy(), truth.without(place_mask), v, [1, 10],
                                 suffix=M.NOPLACES))
    rows, tags = M.location_queries(truth, v, 0, min_images)
    with torch.no_grad():
        retrieved = torch.stack([net(images, torch.full((images.shape[0],), int(t)), loc[r].expand(images.shape[0], -1),
                                     table).topk(10).indices for r, t in zip(rows, tags)]).numpy()
    out.update(M.location_retrieval_metrics(retrieved, rows, tags, truth, split["latitude"], split["longitude"], v,
                                            place_mask))
    return out


def test_evaluation_gives_the_brute_force_metrics():
    v, n = 30, 60
    net = random_net(True, num_tags=v)
    images, table, _, lat, lon = random_inputs(n, num_tags=v)
    rng = np.random.default_rng(0)
    # Few tags per image, from a small pool of frequent ones, so that retrieval has queries.
    truth = M.TagSets.from_lists([sorted(set(rng.integers(0, 8, rng.integers(1, 4)).tolist())) for _ in range(n)])
    split = {"embedding": images.numpy(), "latitude": lat.numpy(), "longitude": lon.numpy(), "truth": truth}
    places = np.zeros(v, dtype=bool)
    places[[1, 4]] = True
    got = evaluate_factorised(net, split, table, place_mask=places, ks=[1, 10], min_images=5, seed=0,
                              pairs=64, unknown_setting="ignored")
    want = brute_force_metrics(net, split, table, places, min_images=5)
    assert want[M.QUERIES] > 20
    assert set(want) <= set(got)
    for k, value in want.items():
        assert got[k] == pytest.approx(value, abs=1e-9), k
    # Dropping the location terms changes the results (they are used).
    assert evaluate_factorised(net, split, table, place_mask=places, ks=[1, 10], min_images=5,
                               zero_location=True) != got


def test_losses_mask_other_positives():
    logits = torch.tensor([[5.0, 5.0, 0.0, 0.0]])
    # Tags 0 and 1 both positive: neither is a negative of the other.
    both = tagging_loss(logits, torch.tensor([[0, 1, -1]]))
    assert both.item() == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(np.log(2.0) - 5.0))))
    only = tagging_loss(logits, torch.tensor([[0, -1, -1]]))
    assert only > both + 0.5                                         # tag 1 counts as a negative here
    # Retrieval: a candidate carrying the tag is not a negative, the query's own image is the target.
    scores = torch.tensor([[1.0, 3.0, 0.0]])
    carries = torch.tensor([[True, True, False]])
    assert retrieval_loss(scores, carries, torch.tensor([0])) < 0.5
    assert retrieval_loss(scores, torch.tensor([[True, False, False]]), torch.tensor([0])) > 2.0


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    return write_embeddings(tmp_path_factory.mktemp("emb"))


def test_experiment_runs_through_training_entry(tmp_path, embeddings):
    """A real fit on the small export: val/loss logged, the best checkpoint evaluated
    after fit (weights-only loadable), tagging and retrieval metrics in metrics.json and MLflow."""
    cfg = train_config(tmp_path, "+experiment=factorised", "+sample=factorised", "model.input_dim=32",
                       "data.batch_size=50", "data.negative_pool=50", "data.shards_dir=null", "trainer.max_epochs=4",
                       "trainer.log_every_n_steps=1", "evaluation.min_images=5", "torch_threads=1",
                       embeddings=embeddings)
    assert cfg.task_name == "factorised" and "location_schedule" not in cfg.callbacks
    metrics = train(cfg)
    assert np.isfinite(metrics["val/loss"]) and metrics["best_val_loss"] <= metrics["val/loss"] + 1e-6
    for k in ("tagging/A@1", "tagging/A@10", "retrieval/P@10_agnostic", "retrieval/P@10_25km"):
        assert k in metrics
    # Learned something: better than the chance of ranking 40 tags at random (A@1 ~ 2.5 tags / 40).
    assert metrics["tagging/A@1"] > 30
    run_dir = tmp_path / "outputs" / "factorised"
    assert (run_dir / "metrics.json").exists()
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["hyper_parameters"]["frequencies"] == [1, 2, 4, 8, 16, 32]
    assert any(k.startswith("net.") for k in best["state_dict"]) and "net.tag_table" not in best["state_dict"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns.db")
    runs = mlflow.search_runs(experiment_names=["evaluate"], output_format="list")
    assert [r.data.tags["mlflow.runName"] for r in runs] == ["factorised"]
    assert runs[0].data.tags["family"] == "factorised" and runs[0].data.tags["tasks"] == "tagging,retrieval"
    assert "tagging/A_at_1" in runs[0].data.metrics and "retrieval/P_at_10_25km" in runs[0].data.metrics


def test_report_rows_show_the_factorised_model_without_paper_numbers():
    from training.report.results import family_row
    from training.report.tables import location_table, noplaces_table, tagging_table

    dist = {f"retrieval/P@10_{g}": 7.0 for g in ("agnostic", "2500km", "750km", "200km", "25km", "1km")}
    results = dict([family_row("mcc", None, None, [{"tagging/A@1": 30.0, "tagging/A@1_noplaces": 20.0, **dist}]),
                    family_row("factorised", None, None, [{"tagging/A@1": 50.0, "tagging/A@1_noplaces": 40.0,
                                                           **dist}])])
    label = "Factorised (image-tag + location-tag) (1 run, single seed)"
    tagging = tagging_table(results)
    assert f"| {label} | 50.00 (-) |" in tagging and tagging.index("MCC") < tagging.index(label)
    assert f"| {label} | 40.00 (-) |" in noplaces_table(results)
    assert f"| {label} | 7.00 (-) | 7.00 (-) |" in location_table(results)
