"""The streaming shard loader: epoch plan, exactly-once reads, equal batches per rank, targets."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers.shards import shards_fixture
from torch.utils.data import DataLoader

from common.contract import read_manifest
from training.data.plan import (PlannedLoader, batch_sizes, batches_per_rank, draw_one_tag, plan_epoch,
                                 worker_skips)
from training.data.shards import ShardStream, read_split_columns, read_split_images

torch.set_num_threads(1)


shards = shards_fixture(rows={"train": 70, "val": 23, "test": 30}, row_group_size=9, files_per_split=3)


def test_read_split_images_returns_exactly_the_photos_asked_for(shards):
    """The report's figures read a few JPEGs by photo_id, never the whole split's images."""
    ids = read_split_columns(shards, "test", ["photo_id"]).column("photo_id").to_pylist()
    wanted = [ids[0], ids[13], ids[-1], ids[13]]        # across files and row groups, one repeated
    got = read_split_images(shards, "test", wanted)
    assert sorted(got) == sorted(set(wanted))
    assert all(b[:2] == b"\xff\xd8" for b in got.values())      # JPEG bytes
    assert read_split_images(shards, "test", []) == {}
    assert read_split_images(shards, "test", [-12345]) == {}


def _rows_of(plan, unit_rows):
    starts = np.concatenate([[0], np.cumsum(unit_rows)])
    return [starts[u] + r for b in plan for u, a, z in b.segments for r in range(a, z)]


@settings(max_examples=60, deadline=None)
@given(unit_rows=st.lists(st.integers(0, 30), min_size=1, max_size=12), world=st.integers(1, 4),
       workers=st.integers(1, 3), batch=st.integers(2, 16), epoch=st.integers(0, 3))
def test_plan_covers_every_row_once_with_equal_batches(unit_rows, world, workers, batch, epoch):
    total = sum(unit_rows)
    if total < world * batches_per_rank(total, world, batch):  # too few rows for that many ranks
        return
    seen, per_rank = [], []
    for rank in range(world):
        n = 0
        for w in range(workers):
            plan = plan_epoch(unit_rows, batch_size=batch, world_size=world, rank=rank,
                              num_workers=workers, worker=w, seed=3, epoch=epoch)
            assert all(0 < b.size <= batch for b in plan)
            seen += _rows_of(plan, unit_rows)
            n += len(plan)
        per_rank.append(n)
    assert sorted(seen) == list(range(total))
    assert len(set(per_rank)) == 1 and per_rank[0] == batches_per_rank(total, world, batch)


def test_plan_is_seeded_by_epoch_and_identical_across_calls():
    units = [10, 7, 10, 10, 3, 10]
    a = plan_epoch(units, batch_size=4, seed=1, epoch=0)
    assert a == plan_epoch(units, batch_size=4, seed=1, epoch=0)
    assert a != plan_epoch(units, batch_size=4, seed=1, epoch=1)
    unshuffled = plan_epoch(units, batch_size=4, shuffle=False)
    assert _rows_of(unshuffled, units) == list(range(sum(units)))


def test_batch_sizes():
    assert batch_sizes(250, 3, 100).tolist() == [84, 83, 83]
    assert batch_sizes(64 * 211 + 1, 212, 64).tolist() == [64] * 149 + [63] * 63  # no batch of 1
    assert batch_sizes(600, 6, 100).tolist() == [100] * 6
    assert batch_sizes(7, 7, 1).tolist() == [1] * 7
    with pytest.raises(ValueError):
        batch_sizes(5, 6, 100)


def test_draw_one_tag_is_uniform_seeded_and_valid():
    offsets = np.array([0, 1, 4, 6])
    values = np.array([5, 1, 2, 3, 8, 9])
    ids = np.array([11, 12, 13])
    a = draw_one_tag(ids, offsets, values, seed=0, epoch=0)
    assert a.tolist() == draw_one_tag(ids, offsets, values, seed=0, epoch=0).tolist()
    assert a[0] == 5 and a[1] in (1, 2, 3) and a[2] in (8, 9)
    many = np.concatenate([draw_one_tag(np.arange(i * 1000, (i + 1) * 1000), np.arange(0, 3001, 3),
                                        np.tile([0, 1, 2], 1000), 0, i) for i in range(3)])
    assert np.all(np.abs(np.bincount(many) / many.size - 1 / 3) < 0.02)


def test_stream_reads_each_row_once_over_ranks_and_workers(shards):
    manifest = read_manifest(shards)
    ids = np.concatenate([pq.read_table(shards / f.path, columns=["photo_id"]).column(0).to_numpy()
                          for f in manifest.splits["train"].files])
    for epoch in (0, 1):
        seen, tags_ok, counts = [], True, []
        for rank in range(2):
            ds = ShardStream(shards, "train", batch_size=8, crop=32, train=True, shuffle=True,
                             shuffle_window=3, seed=5, world_size=2, rank=rank)
            ds.set_epoch(epoch)
            batches = list(DataLoader(ds, batch_size=None, num_workers=2))
            counts.append(len(batches))
            assert len(batches) == len(ds)
            for b in batches:
                assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (32, 32, 3)
                seen += b["photo_id"].tolist()
                off, val = b["tag_offsets"], b["tag_values"]
                tags_ok &= all(int(t) in val[off[i]:off[i + 1]].tolist() for i, t in enumerate(b["tag"]))
        assert counts[0] == counts[1]
        assert sorted(seen) == sorted(ids.tolist())
        assert tags_ok


def test_mcc_draw_does_not_depend_on_topology(shards):
    def draws(world, workers):
        out = {}
        for rank in range(world):
            ds = ShardStream(shards, "train", batch_size=8, crop=32, train=True, shuffle=True, seed=5,
                             world_size=world, rank=rank)
            ds.set_epoch(2)
            for b in DataLoader(ds, batch_size=None, num_workers=workers):
                out.update(zip(b["photo_id"].tolist(), b["tag"].tolist()))
        return out

    assert draws(1, 0) == draws(2, 2)


@pytest.mark.parametrize("counts", [[3, 3, 2], [1, 0, 2], [5]])
def test_worker_skips_follow_the_loaders_turn(counts):
    """The loader takes a batch from each worker in turn; skipping each worker's share of the first
    ``done`` of that order leaves exactly the rest of it."""
    order = [(w, i) for i in range(max(counts)) for w in range(len(counts)) if i < counts[w]]
    for done in range(len(order) + 1):
        skips = worker_skips(counts, done)
        rest = [(w, i) for i in range(max(counts)) for w in range(len(counts)) if skips[w] <= i < counts[w]]
        assert rest == order[done:] and sum(skips) == done


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_goes_on_at_the_next_batch_with_the_same_draws(shards, workers):
    """A loader restored from a mid-epoch state yields the uninterrupted epoch's remaining batches:
    the same photos, crops, flips and MCC targets, in the same order (the skipped ones unread)."""
    def loader(position):
        ds = ShardStream(shards, "train", batch_size=8, crop=32, train=True, shuffle=True, shuffle_window=3, seed=5)
        return PlannedLoader(ds, position=position, num_workers=workers)

    whole = loader(lambda: (0, 0))
    whole.dataset.set_epoch(1)
    full = list(whole)
    assert len(full) == len(whole) == 9
    saved = loader(lambda: (1, 4)).state_dict()
    resumed = loader(lambda: (0, 0))
    resumed.load_state_dict(saved)
    rest = list(resumed)
    assert len(rest) == len(full) - 4
    for a, b in zip(full[4:], rest):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ended = loader(lambda: (0, 0))                       # saved at the end of epoch 1: epoch 2 from its start
    ended.load_state_dict({**saved, "batches_done": 9})
    assert ended.dataset.epoch.get() == 2 and len(list(ended)) == 9


def test_resuming_inside_an_epoch_planned_for_other_ranks_stops_naming_both(shards):
    from training.errors import SetupError

    ds = ShardStream(shards, "train", batch_size=16, crop=32, train=True, shuffle=True, seed=5)
    with pytest.raises(SetupError, match=r"after batch 2 of 9 of epoch 0, planned for 1 rank\(s\) x 8 rows.*5 batches"):
        PlannedLoader(ds, position=lambda: (0, 0)).load_state_dict(
            {"epoch": 0, "batches_done": 2, "batches": 9, "world_size": 1, "batch_size": 8})


@pytest.mark.parametrize("train", [True, False])
def test_device_decode_gives_the_cpu_paths_pixels(shards, train):
    """data.decode=device: the workers ship JPEG bytes and crop draws, the device decodes
    (torchvision; here the CPU): the same pixels, crops and flips as the workers' PIL decode."""
    from training.data.images import decode_batch

    kw = dict(batch_size=8, crop=32, train=train, shuffle=train, seed=5)
    cpu = list(ShardStream(shards, "train", **kw))
    device = list(ShardStream(shards, "train", decode="device", **kw))
    assert len(cpu) == len(device) and "image" not in device[0]
    for a, b in zip(cpu, device):
        assert torch.equal(a["photo_id"], b["photo_id"])
        assert torch.equal(a.get("flip", a["tag"]), b.get("flip", b["tag"]))
        pixels = decode_batch(b["jpeg"], b["jpeg_offsets"], 32, None, b.get("crop_draws"), "cpu")
        assert torch.equal(pixels, a["image"][..., :3])
    # Resized (short side 40 -> 48), or decoded at half scale (PIL's DCT scaling for 16 px crops):
    # the device resizes as PIL does, closely but not bit for bit.
    for crop, resize in ((32, 48), (16, None)):
        a = next(iter(ShardStream(shards, "val", batch_size=8, crop=crop, resize=resize)))
        b = next(iter(ShardStream(shards, "val", batch_size=8, crop=crop, resize=resize, decode="device")))
        pixels = decode_batch(b["jpeg"], b["jpeg_offsets"], crop, resize, None, "cpu")
        assert pixels.shape == a["image"][..., :3].shape
        assert (pixels.float() - a["image"][..., :3].float()).abs().mean() < 4.0


def test_eval_stream_is_deterministic_centre_crop(shards):
    ds = ShardStream(shards, "val", batch_size=10, crop=24, resize=30)
    a, b = list(ds), list(ds)
    assert [x["photo_id"].tolist() for x in a] == [x["photo_id"].tolist() for x in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert sum(x["photo_id"].numel() for x in a) == 23
