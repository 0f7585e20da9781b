"""LocSens: architecture, loss, negatives, location sampling and its schedule, evaluation, training."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers.embeddings import write_embeddings
from torch import nn

from common import metrics as M
from training.callbacks.sigma_snapshots import LocationSchedule
from training.data.embeddings import LocSensDataModule, pad_tags
from training.evaluate.locsens import evaluate_locsens, retrieve_images, tag_images, tag_images_naive
from training.models.locsens import PAPER_HIDDEN, LocSens, LocSensNet, margin_ranking_loss
from training.models.negatives import draw_positive_tags, has_tag, sample_negatives
from training.models.locations import normalise_location, sample_locations
from training.models.schedules import StageSchedule


def test_paper_architecture_layout():
    net = LocSensNet()
    assert (net.image_proj.in_features, net.image_proj.out_features) == (300, 300)
    assert (net.tag_proj.in_features, net.tag_proj.out_features) == (300, 300)
    assert (net.loc_proj.in_features, net.loc_proj.out_features) == (2, 300)
    assert (net.first.in_features, net.first.out_features) == (900, 2048)
    linears = [net.first] + [m for m in net.rest if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [*PAPER_HIDDEN, 1]
    norms = [net.first_norm] + [m for m in net.rest if isinstance(m, nn.GroupNorm)]
    assert [n.num_groups for n in norms] == [32] * 5 and [n.num_channels for n in norms] == list(PAPER_HIDDEN)
    assert isinstance(net.rest[-1], nn.Linear)          # a raw score: no sigmoid at the end
    macs = sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))
    assert 12.5e6 < macs < 13.5e6                        # ~13M multiply-adds per triplet


def test_projections_are_l2_normalised_per_modality():
    torch.manual_seed(0)
    net = LocSensNet(input_dim=16, modality_dim=64, hidden=(64, 32))
    for proj, x in ((net.project_image, torch.randn(8, 16)), (net.project_tag, torch.randn(8, 16)),
                    (net.project_location, torch.rand(8, 2))):
        norms = proj(x).norm(dim=-1)
        assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-5)


def test_margin_loss_hand_computed():
    pos = torch.tensor([0.5, 1.0])
    neg = torch.tensor([[0.45, 0.7], [0.2, 1.5]])
    # max(0, .1-.5+.45)=.05, max(0,.1-.5+.7)=.3, max(0,.1-1+.2)=0, max(0,.1-1+1.5)=.6 -> mean .2375
    assert margin_ranking_loss(pos, neg, margin=0.1).item() == pytest.approx(0.2375)
    valid = torch.tensor([[True, False], [True, True]])
    assert margin_ranking_loss(pos, neg, valid, margin=0.1).item() == pytest.approx((0.05 + 0 + 0.6) / 3)


def _random_tags(b=64, t=5, v=30, seed=0):
    rng = np.random.default_rng(seed)
    lists = [sorted(rng.choice(v, size=rng.integers(1, t + 1), replace=False).tolist()) for _ in range(b)]
    mat = np.full((b, t), -1)
    for i, l in enumerate(lists):
        mat[i, :len(l)] = l
    return torch.as_tensor(mat), v


@pytest.mark.parametrize("mode", ["tagging", "retrieval"])
def test_negatives_never_contain_a_positive_pair(mode):
    tag_ids, v = _random_tags()
    gen = torch.Generator().manual_seed(1)
    pos = draw_positive_tags(tag_ids, gen)
    assert bool(has_tag(tag_ids, torch.arange(len(pos)), pos).all())
    trip = sample_negatives(tag_ids, pos, v, n=6, mode=mode, generator=gen)
    assert trip.neg_image.shape == trip.neg_tag.shape == (64, 6)
    assert trip.valid.float().mean() > 0.95
    assert not bool((has_tag(tag_ids, trip.neg_image, trip.neg_tag) & trip.valid).any())
    rows = torch.arange(64)[:, None]
    if mode == "retrieval":
        assert bool((trip.neg_tag == pos[:, None]).all()) and bool((trip.neg_image != rows).all())
    else:
        replaced_image = trip.neg_image != rows
        assert bool((trip.neg_tag[replaced_image] == pos[:, None].expand(-1, 6)[replaced_image]).all())
        assert 0.35 < replaced_image.float().mean() < 0.65       # either kind, chosen at random


def test_negatives_masked_when_impossible():
    tag_ids = torch.tensor([[0, -1], [0, 1], [0, -1]])          # every image carries tag 0
    trip = sample_negatives(tag_ids, torch.tensor([0, 0, 0]), 2, n=3, mode="retrieval",
                            generator=torch.Generator().manual_seed(0))
    assert not bool(trip.valid.any())


def test_sigma_sampling_statistics_and_wrapping():
    gen = torch.Generator().manual_seed(0)
    loc = torch.full((20000, 2), 0.5)
    for sigma in (0.01, 0.05, 0.1):
        s = sample_locations(loc, sigma, gen)
        assert float(s.std()) == pytest.approx(sigma, rel=0.05)
        assert float((s - 0.5).mean()) == pytest.approx(0.0, abs=3 * sigma / math.sqrt(20000) * 2)
    edge = sample_locations(torch.full((20000, 2), 0.99), 0.05, gen)
    assert float(edge.min()) >= 0.0 and float(edge.max()) < 1.0
    assert float((edge < 0.2).float().mean()) > 0.2             # wrapped past 1 back to ~0
    assert torch.equal(sample_locations(loc, 0.0, gen), loc)


def test_location_normalisation():
    loc = normalise_location(torch.tensor([-90.0, 0.0, 90.0]), torch.tensor([-180.0, 0.0, 180.0]))
    assert torch.allclose(loc, torch.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]))


def test_sigma_schedule_values():
    s = StageSchedule.from_config([[1.0, 0.3], [0.1, 0.175], [0.05, 0.175], [0.01, 0.175], [0.0, 0.175]])
    assert s.boundaries(1000) == [300, 475, 650, 825, 1000]
    values = [s.value(step, 1000) for step in (0, 299, 300, 474, 475, 650, 824, 825, 999)]
    assert values == [1.0, 1.0, 0.1, 0.1, 0.05, 0.01, 0.01, 0.0, 0.0]
    assert all(a >= b for a, b in zip(values, values[1:]))     # downwards, as in the paper
    ramp = StageSchedule.from_config([[0.0, 0.5], [1.0, 0.5]], interpolate=True)
    assert [ramp.value(st, 100) for st in (0, 49, 50, 75, 99)] == [0.0, 0.0, 0.0, 0.5, pytest.approx(0.98)]
    with pytest.raises(ValueError):
        StageSchedule.from_config([[1.0, 0.0]])


def _small_net(seed=0, dim=16):
    torch.manual_seed(seed)
    return LocSensNet(input_dim=dim, modality_dim=32, hidden=(64, 32), groups=8).eval()


def test_batched_tagging_matches_the_naive_scoring():
    net = _small_net()
    images, tags, loc = torch.randn(12, 16), torch.randn(40, 16), torch.rand(12, 2)
    fast = tag_images(net, images, loc, tags, k=10, pairs=100)          # several chunks
    naive = tag_images_naive(net, images, loc, tags, k=10)
    assert np.array_equal(fast, naive)


def test_batched_retrieval_matches_brute_force():
    net = _small_net(1)
    gallery, tags = torch.randn(30, 16), torch.randn(10, 16)
    q_tags, q_loc = torch.tensor([0, 3, 3, 9]), torch.rand(4, 2)
    fast = retrieve_images(net, gallery, q_tags, q_loc, tags, k=10, pairs=64)
    with torch.no_grad():
        full = torch.stack([net(gallery, tags[t].expand(30, -1), l.expand(30, -1)) for t, l in zip(q_tags, q_loc)])
    assert np.array_equal(fast, full.topk(10, dim=1).indices.numpy())


def test_evaluation_against_brute_force_metrics(tmp_path):
    directory = write_embeddings(tmp_path / "emb", dim=16, num_tags=20, rows=(("test", 60),))
    dm = LocSensDataModule(str(directory))
    split = dm.split_arrays("test")
    net = _small_net(2)
    places = np.zeros(20, dtype=bool)
    places[:5] = True
    got = evaluate_locsens(net, split, dm.tag_embeddings(), place_mask=places, min_images=3, seed=4)
    # Reference: score every triplet, then the shared metrics.
    tags = torch.nn.functional.normalize(torch.as_tensor(dm.tag_embeddings()), dim=-1)
    images = torch.as_tensor(split["embedding"])
    loc = normalise_location(torch.as_tensor(split["latitude"]).float(), torch.as_tensor(split["longitude"]).float())
    with torch.no_grad():
        full = torch.stack([net(images[i].expand(20, -1), tags, loc[i].expand(20, -1)) for i in range(60)])
    truth = split["truth"]
    ref = M.tagging_metrics(full.topk(20, dim=1).indices.numpy(), truth, 20, (1, 10))
    for name, value in ref.items():
        assert got[name] == pytest.approx(value)
    q_rows, q_tags = M.location_queries(truth, 20, 4, 3)
    with torch.no_grad():
        per_q = torch.stack([net(images, tags[t].expand(60, -1), loc[r].expand(60, -1)) for r, t in zip(q_rows, q_tags)])
    lat, lon = split["latitude"], split["longitude"]
    ref = M.p_at_10_by_distance(per_q.topk(10, dim=1).indices.numpy(), q_tags, lat[q_rows], lon[q_rows],
                                truth, lat, lon, 20)
    for g, value in ref.items():
        assert got[f"retrieval/P@10_{g}"] == pytest.approx(value)


def test_pad_tags():
    import pyarrow as pa

    mat = pad_tags(pa.array([[3, 1], [], [7]], pa.list_(pa.int32())), width=3)
    assert mat.tolist() == [[3, 1, -1], [-1, -1, -1], [7, -1, -1]]
    with pytest.raises(ValueError, match="an image has 2 tags, more than the 1 its manifest's max_tags allows"):
        pad_tags(pa.array([[3, 1]], pa.list_(pa.int32())), width=1)      # never cut silently


def test_the_tag_width_comes_from_the_export(tmp_path):
    """LocSens pads tag lists to the export's max_tags; an export that does not record it is measured."""
    from common.embeddings import MANIFEST_NAME, EmbeddingsManifest

    export = write_embeddings(tmp_path / "emb", rows=(("train", 200), ("val", 40)))
    manifest = EmbeddingsManifest.read(export)
    dm = LocSensDataModule(str(export))
    assert dm.max_tags == manifest.max_tags == 4          # one town tag and 1 to 3 content tags
    batch = next(iter(dm.val_dataloader()))
    assert batch["tag_ids"].shape[1] == 4
    manifest.max_tags = None                               # an export from before it was recorded
    (export / MANIFEST_NAME).write_text(manifest.to_json())
    assert LocSensDataModule(str(export)).max_tags == 4


def _module(num_tags, dim, location, **kw):
    return LocSens(num_tags=num_tags, input_dim=dim, modality_dim=32, hidden=(64, 32), groups=8,
                   optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-4),
                   location=location, **kw)


@pytest.mark.parametrize("location", ["raw", "zeroed", "dropout", "sampling"])
def test_fast_dev_run_each_variant(tmp_path, location):
    directory = write_embeddings(tmp_path / "emb")
    dm = LocSensDataModule(str(directory), batch_size=64)
    model = _module(dm.num_tags, 32, location)
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         callbacks=[LocationSchedule(str(tmp_path / "ckpt"))])
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert float(model.tag_table.norm(dim=1).mean()) == pytest.approx(1.0, abs=1e-4)


def test_sampling_run_lowers_sigma_and_snapshots_each_stage(tmp_path):
    directory = write_embeddings(tmp_path / "emb")
    dm = LocSensDataModule(str(directory), batch_size=50)
    model = _module(dm.num_tags, 32, "sampling",
                    sigma_schedule=[[1.0, 0.4], [0.1, 0.15], [0.05, 0.15], [0.01, 0.15], [0.0, 0.15]])
    schedule = LocationSchedule(str(tmp_path / "ckpt"))
    sigmas = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sigmas.append(pl_module.sigma)

    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[schedule, Record()], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert all(a >= b for a, b in zip(sigmas, sigmas[1:]))
    assert sorted(schedule.saved) == sorted(["sigma_1", "sigma_0.1", "sigma_0.05", "sigma_0.01", "sigma_0"])
    assert all((tmp_path / "ckpt" / f"{n}.ckpt").exists() for n in schedule.saved)


def test_training_learns_the_fixture(tmp_path):
    directory = write_embeddings(tmp_path / "emb", rows=(("train", 1500), ("val", 200), ("test", 300)))
    dm = LocSensDataModule(str(directory), batch_size=100)
    model = _module(dm.num_tags, 32, "raw")
    split = dm.split_arrays("test")
    model.set_tag_embeddings(torch.as_tensor(dm.tag_embeddings()))
    before = evaluate_locsens(model.net, split, dm.tag_embeddings(), min_images=5)
    pl.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_progress_bar=False,
               enable_checkpointing=False).fit(model, datamodule=dm)
    after = evaluate_locsens(model.net, split, dm.tag_embeddings(), min_images=5)
    assert after["tagging/A@1"] > before["tagging/A@1"] + 10
    assert after["retrieval/P@10_25km"] > before["retrieval/P@10_25km"]


def test_triplet_loss_by_modality_parts_equals_concatenation():
    torch.manual_seed(3)
    model = _module(30, 16, "raw")
    model.set_tag_embeddings(torch.randn(30, 16))
    tag_ids, _ = _random_tags(b=20, v=30, seed=5)
    batch = {"embedding": torch.randn(20, 16), "tag_ids": tag_ids,
             "latitude": torch.rand(20) * 180 - 90, "longitude": torch.rand(20) * 360 - 180}
    got = model.triplet_loss(batch, train=False, generator=torch.Generator().manual_seed(9))
    # Reference: the same draws, scored through the plain forward pass on concatenated inputs.
    gen = torch.Generator().manual_seed(9)
    pos_tag = draw_positive_tags(tag_ids, gen)
    trip = sample_negatives(tag_ids, pos_tag, 30, 6, "tagging", 8, gen)
    loc = normalise_location(batch["latitude"], batch["longitude"])
    with torch.no_grad():
        pos = model.net(batch["embedding"], model.tag_table[pos_tag], loc)
        neg = model.net(batch["embedding"][trip.neg_image], model.tag_table[trip.neg_tag],
                        loc.unsqueeze(1).expand(-1, 6, -1))
    assert got.item() == pytest.approx(margin_ranking_loss(pos, neg, trip.valid, 0.1).item(), rel=1e-5)
