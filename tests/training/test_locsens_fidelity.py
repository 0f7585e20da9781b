"""LocSens computes the authors' function: their released network (restated below from its
structure), their input normalisation, their per-triplet location sampling, and the paper's
progressive fusion and dropout on the location representation; negatives from a pool that spans
row groups; each rank its own draws; a global batch."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.embeddings import write_embeddings
from torch import nn

from training.data.embeddings import EmbeddingStream, LocSensDataModule
from training.evaluate.locsens import evaluate_locsens
from training.models.locsens import PAPER_HIDDEN, LocSens, LocSensNet, draw_generator, margin_ranking_loss
from training.models.negatives import draw_positive_tags, has_tag, sample_negatives
from training.models.locations import normalise_location


class AuthorsNet(nn.Module):
    """The released model's function: per-modality Linear + ReLU, L2 norm, concatenated as
    (location, image, tag), then Linear + GroupNorm(32, eps=1e-3) + ReLU blocks and a raw score.
    Their data loader L2-normalises MCC's image and tag embeddings before they enter."""

    def __init__(self):
        super().__init__()
        self.fc_i, self.fc_t, self.fc_loc = nn.Linear(300, 300), nn.Linear(300, 300), nn.Linear(2, 300)
        widths = (900, *PAPER_HIDDEN)
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.gns = nn.ModuleList(nn.GroupNorm(32, b, eps=0.001) for b in PAPER_HIDDEN)
        self.out = nn.Linear(512, 1)

    def forward(self, img, tag, lat, lon):
        img, tag = F.normalize(img, dim=1), F.normalize(tag, dim=1)            # done at load time
        parts = [F.relu(self.fc_loc(torch.cat([lat, lon], 1))), F.relu(self.fc_i(img)), F.relu(self.fc_t(tag))]
        x = torch.cat([p / p.norm(dim=1, keepdim=True) for p in parts], 1)
        for fc, gn in zip(self.fcs, self.gns):
            x = F.relu(gn(fc(x)))
        return self.out(x).squeeze(1)


def _copy_weights(ours: LocSensNet, theirs: AuthorsNet) -> None:
    """Our first layer takes (image, tag, location); theirs (location, image, tag)."""
    with torch.no_grad():
        for a, b in ((theirs.fc_i, ours.image_proj), (theirs.fc_t, ours.tag_proj), (theirs.fc_loc, ours.loc_proj)):
            a.weight.copy_(b.weight), a.bias.copy_(b.bias)
        w_i, w_t, w_l = ours.first_layer_parts()
        theirs.fcs[0].weight.copy_(torch.cat([w_l, w_i, w_t], 1))
        theirs.fcs[0].bias.copy_(ours.first.bias)
        our_linears = [m for m in ours.rest if isinstance(m, nn.Linear)]
        our_norms = [ours.first_norm] + [m for m in ours.rest if isinstance(m, nn.GroupNorm)]
        for a, b in zip(list(theirs.fcs)[1:] + [theirs.out], our_linears):
            a.weight.copy_(b.weight), a.bias.copy_(b.bias)
        for a, b in zip(theirs.gns, our_norms):
            a.weight.copy_(torch.randn_like(b.weight)), a.bias.copy_(torch.randn_like(b.bias))
            b.weight.copy_(a.weight), b.bias.copy_(a.bias)


def test_scores_equal_the_authors_network_with_the_same_weights():
    torch.manual_seed(0)
    ours, theirs = LocSensNet().double().eval(), AuthorsNet().double().eval()
    _copy_weights(ours, theirs)
    img, tag = torch.randn(64, 300, dtype=torch.float64) * 3, torch.randn(64, 300, dtype=torch.float64) * 0.2
    lat, lon = torch.rand(64, 1, dtype=torch.float64), torch.rand(64, 1, dtype=torch.float64)
    with torch.no_grad():
        got = ours(img, tag, torch.cat([lat, lon], 1))
        want = theirs(img, tag, lat, lon)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)
    assert all(m.eps == 1e-3 for m in ours.modules() if isinstance(m, nn.GroupNorm))


def test_image_embeddings_enter_l2_normalised_in_training_and_evaluation(tmp_path):
    torch.manual_seed(1)
    net = LocSensNet(input_dim=32, modality_dim=32, hidden=(64, 32), groups=8).eval()
    img, tag, loc = torch.randn(10, 32), torch.randn(10, 32), torch.rand(10, 2)
    scale = torch.rand(10, 1) * 20 + 0.05
    with torch.no_grad():
        assert torch.allclose(net(img * scale, tag, loc), net(img, tag, loc), atol=1e-5)
    # Evaluation scores the exported (unnormalised) embeddings the same as normalised ones.
    directory = write_embeddings(tmp_path / "emb", rows=(("test", 80),))
    split = LocSensDataModule(str(directory)).split_arrays("test")
    tags = LocSensDataModule(str(directory)).tag_embeddings()
    scaled = dict(split, embedding=split["embedding"] * np.linspace(0.1, 9.0, 80, dtype=np.float32)[:, None])
    a = evaluate_locsens(net, split, tags, min_images=3)
    b = evaluate_locsens(net, scaled, tags, min_images=3)
    assert a == pytest.approx(b)


def _module(location, **kw):
    model = LocSens(num_tags=30, input_dim=16, modality_dim=32, hidden=(64, 32), groups=8,
                    optimizer=functools.partial(torch.optim.SGD, lr=0.1), location=location, **kw)
    model.set_tag_embeddings(torch.randn(30, 16))
    return model


def _batch(b=20, pool=0, seed=5):
    rng = np.random.default_rng(seed)
    tags = torch.full((b + pool, 4), -1, dtype=torch.int64)
    for i in range(b + pool):
        c = int(rng.integers(1, 5))
        tags[i, :c] = torch.as_tensor(rng.choice(30, c, replace=False))
    batch = {"embedding": torch.randn(b, 16), "tag_ids": tags[:b],
             "latitude": torch.rand(b) * 180 - 90, "longitude": torch.rand(b) * 360 - 180}
    if pool:
        batch["pool_embedding"], batch["pool_tag_ids"] = torch.randn(pool, 16), tags[b:]
    return batch


def test_location_sampling_draws_each_triplet_on_its_own():
    torch.manual_seed(2)
    model = _module("sampling")
    model.sigma = 0.1
    batch = _batch(pool=12)
    got = model.triplet_loss(batch, train=True, generator=torch.Generator().manual_seed(4))
    # Reference: the same draws in the same order, every triplet scored by the plain forward pass
    # with a location of its own: the positive's and each negative's noise drawn independently.
    gen = torch.Generator().manual_seed(4)
    pos_tag = draw_positive_tags(batch["tag_ids"], gen)
    trip = sample_negatives(batch["tag_ids"], pos_tag, 30, 6, "tagging", 8, gen, pool_tag_ids=batch["pool_tag_ids"])
    loc = normalise_location(batch["latitude"], batch["longitude"]).unsqueeze(1).expand(-1, 7, -1)
    noisy = torch.remainder(loc + 0.1 * torch.randn(loc.shape, generator=gen), 1.0)
    assert not torch.allclose(noisy[:, 0], noisy[:, 1])
    images = torch.cat([batch["embedding"], batch["pool_embedding"]])
    with torch.no_grad():
        pos = model.net(batch["embedding"], model.tag_table[pos_tag], noisy[:, 0])
        neg = model.net(images[trip.neg_image], model.tag_table[trip.neg_tag], noisy[:, 1:])
    assert got.item() == pytest.approx(margin_ranking_loss(pos, neg, trip.valid, 0.1).item(), rel=1e-5)
    # Validation uses the true location, shared by a positive and its negatives.
    parts = model.location_parts(batch["latitude"], batch["longitude"], 7, train=False)
    assert parts.shape[1] == 1


def test_fusion_and_dropout_scale_the_location_representation():
    torch.manual_seed(3)
    lat, lon = torch.rand(400) * 180 - 90, torch.rand(400) * 360 - 180
    model = _module("dropout", location_dropout=0.0)
    net = model.net
    loc = normalise_location(lat, lon)
    w_l = net.first_layer_parts()[2]
    with torch.no_grad():
        rep = net.project_location(loc)
        for alpha in (0.0, 0.5, 1.0):
            model.fusion = alpha
            got = model.location_parts(lat, lon, 7, train=True)[:, 0]
            assert torch.allclose(got, net.first.bias + alpha * rep @ w_l.T, atol=1e-6)
        # Dropped: the representation is zero (only the bias remains), not the point (-90, -180).
        model = _module("dropout", location_dropout=0.5)
        model.fusion = 1.0
        parts = model.location_parts(lat, lon, 7, train=True, generator=torch.Generator().manual_seed(0))[:, 0]
        dropped = torch.isclose(parts, model.net.first.bias.expand_as(parts), atol=1e-6).all(dim=1)
        assert 0.4 < float(dropped.float().mean()) < 0.6
        # Zeroed locations: the representation times 0, in training and evaluation alike.
        zeroed = _module("zeroed")
        for train in (True, False):
            parts = zeroed.location_parts(lat, lon, 7, train=train)
            assert torch.allclose(parts, zeroed.net.first.bias.expand_as(parts))


def test_negative_images_come_from_the_pool():
    batch = _batch(b=20, pool=40)
    gen = torch.Generator().manual_seed(0)
    pos = draw_positive_tags(batch["tag_ids"], gen)
    for mode in ("tagging", "retrieval"):
        trip = sample_negatives(batch["tag_ids"], pos, 30, 6, mode, 8, gen, pool_tag_ids=batch["pool_tag_ids"])
        own = trip.neg_image == torch.arange(20)[:, None]
        from_pool = trip.neg_image >= 20
        assert bool((own | from_pool).all())                     # never another image of the batch
        assert from_pool.float().mean() > (0.9 if mode == "retrieval" else 0.4)
        rows = (trip.neg_image - 20).clamp(min=0)
        carries = has_tag(batch["pool_tag_ids"], rows, pos[:, None].expand_as(rows))
        assert not bool((carries & from_pool & trip.valid).any())


def test_the_stream_shuffles_across_row_groups_and_carries_a_pool(tmp_path):
    directory = write_embeddings(tmp_path / "emb", rows=(("train", 1200),), row_group=100)
    stream = EmbeddingStream(directory, "train", batch_size=50, shuffle=True, shuffle_rows=600, negative_pool=64)
    batches = list(stream)
    groups = [len(set((b["photo_id"].numpy() - 1) // 100)) for b in batches]
    assert min(groups) >= 3                                        # rows of several row groups per batch
    assert all(b["pool_embedding"].shape == (64, 32) and b["pool_tag_ids"].shape[0] == 64 for b in batches)
    ids = torch.cat([b["photo_id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(1, 1201))           # every row once per epoch
    # New batch-mates next epoch.
    stream.set_epoch(1)
    first = {frozenset(b["photo_id"].tolist()) for b in batches}
    assert not first & {frozenset(b["photo_id"].tolist()) for b in stream}


def test_each_rank_draws_its_own_noise_and_negatives():
    a, b = draw_generator(7, rank=0, epoch=3), draw_generator(7, rank=1, epoch=3)
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    assert torch.equal(torch.rand(8, generator=draw_generator(7, 1, 3)), torch.rand(8, generator=draw_generator(7, 1, 3)))


def test_the_batch_is_global_and_split_over_ranks(tmp_path):
    directory = write_embeddings(tmp_path / "emb")
    dm = LocSensDataModule(str(directory), batch_size=1024)
    assert [dm.per_rank_batch(w) for w in (1, 2, 8)] == [1024, 512, 128]
    with pytest.raises(ValueError, match="divisible"):
        dm.per_rank_batch(3)
