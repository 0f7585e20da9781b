"""shard_dataset: images resized from a multimedia-commons tree or img2dataset Parquet, rejects,
exact contract schema and row groups, reproducible random order, and a manifest that adds up."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from job_helpers import digests, hidden_entries, job_config, refuse
from PIL import Image
from yfcc_factory import TOWNS, at, photo_hash, write_raw

from common.contract import SHARD_SCHEMA, VOCAB_SCHEMA, read_manifest
from pipeline import images, yfcc
from pipeline.config import PipelineError

pytestmark = pytest.mark.spark


def jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG")
    return out.getvalue()


def test_resize_short_side_keeps_aspect():
    data, w, h = images.resize_short_side(jpeg(200, 100, 0), 50, 90)
    assert (w, h) == (100, 50)
    assert Image.open(io.BytesIO(data)).size == (100, 50)
    _, w, h = images.resize_short_side(jpeg(30, 60, 1), 48, 90)   # small images are scaled up
    assert (w, h) == (48, 96)
    png = io.BytesIO()
    Image.new("L", (40, 40)).save(png, format="PNG")
    assert images.resize_short_side(png.getvalue(), 20, 90)[1:] == (20, 20)


@pytest.mark.parametrize("data", [b"", b"not an image", jpeg(64, 64, 2)[:200]])
def test_undecodable_bytes_are_a_reason(data):
    with pytest.raises(images.ImageError) as exc:
        images.resize_short_side(data, 32, 90)
    assert exc.value.reason == "undecodable_image"


def test_missing_file_is_a_reason(tmp_path):
    with pytest.raises(images.ImageError) as exc:
        images.load_image(None, "abc/def/abcdef.jpg", str(tmp_path), 32, 90)
    assert exc.value.reason == "missing_image"


N = 120
MISSING, CORRUPT = {7, 8}, {9}


def _world(tmp_path: Path) -> Path:
    towns = ["nyc", "galway", "paris"]
    lines, places = [], {}
    for i in range(1, N + 1):
        town = towns[i % 3]
        lines.append(at(town, i, tags=f"cat,{town},t{i % 5}x,dog"))
        places[i] = TOWNS[town]
    raw = write_raw(tmp_path / "raw", lines, places)
    for i in range(1, N + 1):
        h = photo_hash(f"http://farm1.staticflickr.com/1/{i}_abc.jpg")
        path = raw / "images" / yfcc.image_relpath(h)
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in MISSING:
            continue
        path.write_bytes(b"\xff\xd8garbage" if i in CORRUPT else jpeg(80 + i % 7, 60, i))
    return raw


def _pipeline(spark, tmp_path, raw, *extra):
    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata
    from jobs.shard_dataset import main as shard_dataset

    cfg = job_config(tmp_path, raw, "vocab.drop_top=0", "splits.test=0.2", "splits.val=0.1",
                     "shard.image_size=32", "shard.rows_per_file=30", "shard.rows_per_row_group=8", *extra)
    clean_metadata(cfg)
    build_vocab(cfg)
    shard_dataset(cfg)
    return cfg


def test_shard_job_writes_contract_shards(spark, tmp_path):
    raw = _world(tmp_path)
    cfg = _pipeline(spark, tmp_path, raw)
    shards = Path(cfg.shard.output)
    m = read_manifest(shards)
    assert m.image_size == 32 and set(m.splits) == {"train", "val", "test"}
    rejects = pq.read_table(cfg.outputs.shard_rejects).to_pylist()
    assert sorted((r["photo_id"], r["reason"]) for r in rejects) == \
        [(7, "missing_image"), (8, "missing_image"), (9, "undecodable_image")]
    assert sum(s.rows for s in m.splits.values()) + len(rejects) == N
    ids = []
    for split, info in m.splits.items():
        for f in info.files:
            pf = pq.ParquetFile(shards / f.path)
            assert pf.schema_arrow.equals(SHARD_SCHEMA)
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            assert sizes == f.row_groups and all(n == 8 for n in sizes[:-1]) and sizes[-1] <= 8
            t = pf.read()
            ids += t["photo_id"].to_pylist()
            assert min(Image.open(io.BytesIO(b)).size for b in t["image"].to_pylist()[:5])[1] == 32
    assert len(ids) == len(set(ids)) == N - 3
    train_ids = [i for f in m.splits["train"].files for i in pq.read_table(shards / f.path)["photo_id"].to_pylist()]
    assert train_ids != sorted(train_ids)          # random order within the split
    assert pq.read_schema(shards / m.vocab_path).equals(VOCAB_SCHEMA)

    before = {p.relative_to(shards): hashlib.md5(p.read_bytes()).hexdigest() for p in shards.rglob("*.parquet")}
    from jobs.shard_dataset import main as shard_dataset
    shard_dataset(cfg)
    after = {p.relative_to(shards): hashlib.md5(p.read_bytes()).hexdigest() for p in shards.rglob("*.parquet")}
    assert after == before                          # a rerun writes the same bytes

    # A failed conservation check publishes neither the new shards nor their rejects.
    published = [digests(shards), digests(cfg.outputs.shard_rejects)]
    other = job_config(tmp_path, raw, "vocab.drop_top=0", "splits.test=0.2", "splits.val=0.1",
                       "shard.image_size=16", "shard.rows_per_file=30", "shard.rows_per_row_group=8")
    with pytest.raises(PipelineError, match="shard_dataset: refused"):
        shard_dataset(other, check=refuse)
    assert [digests(shards), digests(cfg.outputs.shard_rejects)] == published
    assert hidden_entries(shards.parent) == []


def test_img2dataset_source(spark, tmp_path):
    raw = _world(tmp_path)
    rows = []
    for i in range(1, N + 1):
        url = f"http://farm1.staticflickr.com/1/{i}_abc.jpg"
        ok = i not in MISSING
        rows.append({"key": f"{i:09d}", "url": url, "status": "success" if ok else "failed_to_download",
                     "jpg": jpeg(64, 48, i) if ok else None, "error_message": None if ok else "404"})
    i2d = tmp_path / "i2d"
    i2d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), i2d / "00000.parquet")
    cfg = _pipeline(spark, tmp_path, raw, "shard.image_source=img2dataset", f"shard.img2dataset_dir={i2d}")
    m = read_manifest(cfg.shard.output)
    rejects = pq.read_table(cfg.outputs.shard_rejects).to_pylist()
    assert sorted((r["photo_id"], r["reason"]) for r in rejects) == [(7, "missing_image"), (8, "missing_image")]
    assert sum(s.rows for s in m.splits.values()) == N - 2
