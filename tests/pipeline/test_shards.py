"""shard_dataset: images resized from a multimedia-commons tree or img2dataset Parquet, rejects,
exact contract schema and row groups, reproducible random order, and a manifest that adds up."""
from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.images import jpeg
from helpers.spark_jobs import digests, job_config, leftovers, output_path, refuse, shard_digests
from PIL import Image
from helpers.yfcc import TOWNS, at, photo_hash, write_raw

from common.contract import SHARD_SCHEMA, VOCAB_SCHEMA, read_manifest, shard_root
from pipeline import images, yfcc
from pipeline.config import PipelineError

pytestmark = pytest.mark.spark


def test_resize_short_side_keeps_aspect():
    data, w, h = images.resize_short_side(jpeg(200, 100, 0), 50, 90)
    assert (w, h) == (100, 50)
    assert Image.open(io.BytesIO(data)).size == (100, 50)
    _, w, h = images.resize_short_side(jpeg(30, 60, 1), 48, 90)   # small images are scaled up
    assert (w, h) == (48, 96)
    png = io.BytesIO()
    Image.new("L", (40, 40)).save(png, format="PNG")
    assert images.resize_short_side(png.getvalue(), 20, 90)[1:] == (20, 20)


def test_a_jpeg_already_at_the_shard_size_passes_through_byte_for_byte():
    at_size = jpeg(48, 32, 3)
    assert images.resize_short_side(at_size, 32, 90) == (at_size, 48, 32)
    assert images.resize_short_side(at_size, 30, 90)[0] != at_size           # another size: resized
    grey = io.BytesIO()
    Image.new("L", (48, 32), 128).save(grey, format="JPEG")
    data, w, h = images.resize_short_side(grey.getvalue(), 32, 90)           # not RGB: made RGB
    assert (w, h) == (48, 32) and Image.open(io.BytesIO(data)).mode == "RGB"
    png = io.BytesIO()
    Image.new("RGB", (48, 32)).save(png, format="PNG")
    data, _, _ = images.resize_short_side(png.getvalue(), 32, 90)            # not a JPEG: encoded
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    with pytest.raises(images.ImageError, match="undecodable_image"):       # checked, not trusted
        images.resize_short_side(at_size[:len(at_size) // 2], 32, 90)


@pytest.mark.parametrize("data", [b"", b"not an image", jpeg(64, 64, 2)[:200]])
def test_undecodable_bytes_are_a_reason(data):
    with pytest.raises(images.ImageError) as exc:
        images.resize_short_side(data, 32, 90)
    assert exc.value.reason == "undecodable_image"


def test_missing_file_is_a_reason(tmp_path):
    got = images.resized(images.read_under(f"file:{tmp_path}", "abc/def/abcdef.jpg"), 32, 90)
    assert isinstance(got, images.ImageError) and got.reason == "missing_image"


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


def test_a_tasks_threads_and_memory_bounds_leave_the_bytes_alone():
    """Threads and images in flight are left out of the resume fingerprint (a rerun with other
    bounds keeps the finished files); decoding uses the task's cores unless told otherwise."""
    from pipeline.shards import ShardSettings

    base = ShardSettings(out_dir="file:/a", image_source="mmcommons", image_root="file:/i", short_side=300,
                         quality=90, rows_per_group=1000)
    other = dataclasses.replace(base, out_dir="file:/b", read_threads=2, decode_threads=4, images_in_flight=5)
    assert base.fingerprint() == other.fingerprint()
    assert base.fingerprint() != dataclasses.replace(base, quality=80).fingerprint()
    assert (base.decoders(None), base.decoders(1), base.decoders(4), other.decoders(1)) == (1, 1, 4, 4)


@pytest.mark.slow
def test_other_thread_and_memory_bounds_write_the_same_shards(spark, tmp_path):
    raw = _world(tmp_path)
    default = _pipeline(spark, tmp_path / "default", raw)
    bounded = _pipeline(spark, tmp_path / "bounded", raw, "shard.images_in_flight=3", "shard.decode_threads=2",
                        "shard.read_threads=1")
    assert shard_digests(bounded.shard.output) == shard_digests(default.shard.output)


@pytest.mark.slow
def test_shard_job_writes_contract_shards(spark, tmp_path, no_renames):
    raw = _world(tmp_path)
    cfg = _pipeline(spark, tmp_path, raw)
    shards = shard_root(cfg.shard.output)
    m = read_manifest(shards)
    assert m.image_size == 32 and set(m.splits) == {"train", "val", "test"}
    rejects = pq.read_table(output_path(cfg.outputs.shard_rejects)).to_pylist()
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
            for g in range(pf.num_row_groups):             # JPEGs plain and uncompressed: the cheapest read
                group = pf.metadata.row_group(g)
                (image,) = [group.column(c) for c in range(group.num_columns)
                            if group.column(c).path_in_schema == "image"]
                assert image.compression == "UNCOMPRESSED" and "RLE_DICTIONARY" not in image.encodings
            t = pf.read()
            ids += t["photo_id"].to_pylist()
            assert min(Image.open(io.BytesIO(b)).size for b in t["image"].to_pylist()[:5])[1] == 32
    assert len(ids) == len(set(ids)) == N - 3
    longest = max(len(t) for info in m.splits.values() for f in info.files
                  for t in pq.read_table(shards / f.path, columns=["tag_ids"])["tag_ids"].to_pylist())
    assert longest <= m.max_tags <= cfg.vocab.max_tags     # the width loaders pad tag lists to: none cut
    train_ids = [i for f in m.splits["train"].files for i in pq.read_table(shards / f.path)["photo_id"].to_pylist()]
    assert train_ids != sorted(train_ids)          # random order within the split
    assert pq.read_schema(shards / m.vocab_path).equals(VOCAB_SCHEMA)

    before = {p.relative_to(shards): hashlib.md5(p.read_bytes()).hexdigest() for p in shards.rglob("*.parquet")}
    from jobs.shard_dataset import main as shard_dataset
    shard_dataset(cfg)
    assert not shards.exists() and shard_root(cfg.shard.output) != shards   # a new version; the one it replaced is gone
    shards = shard_root(cfg.shard.output)
    after = {p.relative_to(shards): hashlib.md5(p.read_bytes()).hexdigest() for p in shards.rglob("*.parquet")}
    assert after == before                          # a rerun writes the same bytes

    # A failed conservation check publishes neither the new shards nor their rejects.
    shards = Path(cfg.shard.output)
    published = [digests(shards), digests(cfg.outputs.shard_rejects)]
    other = job_config(tmp_path, raw, "vocab.drop_top=0", "splits.test=0.2", "splits.val=0.1",
                       "shard.image_size=16", "shard.rows_per_file=30", "shard.rows_per_row_group=8")
    with pytest.raises(PipelineError, match="shard_dataset: refused"):
        shard_dataset(other, check=refuse)
    assert [digests(shards), digests(cfg.outputs.shard_rejects)] == published
    assert leftovers(shards.parent) == []


def _i2d_output(folder: Path, *, with_photo_id: bool = True) -> Path:
    """img2dataset-shaped Parquet output: two files with row groups of 10 rows; photos 7 and 8
    failed to download, 9 failed to resize, 10 is absent, 11 is corrupt bytes marked success."""
    folder.mkdir()
    rows = []
    for i in range(1, N + 1):
        if i == 10:
            continue
        status = {7: "failed_to_download", 8: "failed_to_download", 9: "failed_to_resize"}.get(i, "success")
        ok = status == "success"
        row = {"key": f"{i:09d}", "url": f"http://farm1.staticflickr.com/1/{i}_abc.jpg", "status": status,
               "error_message": None if ok else "HTTP Error 404", "jpg": (b"junk" if i == 11 else jpeg(64, 48, i))
               if ok else None}
        rows.append({**row, "photo_id": i} if with_photo_id else row)
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), folder / f"{n:05d}.parquet", row_group_size=10)
    return folder


I2D_REJECTS = [(7, "download_failed"), (8, "download_failed"), (9, "undecodable_image"), (10, "missing_image"),
               (11, "undecodable_image")]


@pytest.mark.slow
@pytest.mark.parametrize("join", ["photo_id", "url"])
def test_img2dataset_source(spark, tmp_path, join):
    raw = _world(tmp_path)
    i2d = _i2d_output(tmp_path / "i2d")
    cfg = _pipeline(spark, tmp_path, raw, "shard.image_source=img2dataset", f"shard.img2dataset_dir={i2d}",
                    f"shard.img2dataset_join={join}")
    m = read_manifest(cfg.shard.output)
    rejects = pq.read_table(output_path(cfg.outputs.shard_rejects)).to_pylist()
    assert sorted((r["photo_id"], r["reason"]) for r in rejects) == I2D_REJECTS
    assert {r["path"] for r in rejects} == {f"http://farm1.staticflickr.com/1/{i}_abc.jpg" for i, _ in I2D_REJECTS}
    assert sum(s.rows for s in m.splits.values()) == N - len(I2D_REJECTS)
    for info in m.splits.values():
        for f in info.files:
            t = pq.read_table(shard_root(cfg.shard.output) / f.path)
            for pid, img in zip(t["photo_id"].to_pylist()[:3], t["image"].to_pylist()[:3]):
                assert Image.open(io.BytesIO(img)).size == (43, 32)   # 64x48 -> short side 32


@pytest.mark.parametrize("setting, message", [
    ("shard.img2dataset_join=key", r"^setting shard.img2dataset_join='key': expected one of \['photo_id', 'url'\]"),
    ("shard.img2dataset_join=photo_id", r"^setting shard.img2dataset_join=photo_id: the img2dataset output in .* "
                                        r"has no photo_id column .*--save_additional_columns"),
])
@pytest.mark.slow
def test_bad_img2dataset_join_is_one_line_naming_the_setting(spark, tmp_path, setting, message):
    from jobs.shard_dataset import main as shard_dataset

    raw = _world(tmp_path)
    i2d = _i2d_output(tmp_path / "i2d", with_photo_id=False)
    cfg = _pipeline(spark, tmp_path, raw)
    bad = job_config(tmp_path, raw, "shard.image_source=img2dataset", f"shard.img2dataset_dir={i2d}", setting)
    with pytest.raises(PipelineError, match=message) as err:
        shard_dataset(bad)
    assert "\n" not in str(err.value)
    assert (shard_root(cfg.shard.output) / "manifest.json").exists()    # the earlier shards are untouched


def test_speculative_tasks_are_refused_as_shard_files_are_written_in_place(tmp_path):
    """Shard files are written where they stay (no temp and move, which on object stores is a
    copy): two copies of one task would write the same file, so the job refuses speculation in
    one line, before it reads anything."""
    import subprocess

    from helpers import ROOT
    from helpers.faults import spark_env

    proc = subprocess.run(["spark-submit", "--master", "local[1]", "--conf", "spark.speculation=true",
                           "--conf", "spark.ui.enabled=false", str(ROOT / "jobs" / "shard_dataset.py"),
                           f"paths.root_dir={tmp_path}", f"paths.mlflow_tracking_uri=sqlite:///{tmp_path}/m.db"],
                          cwd=ROOT, env=spark_env(), capture_output=True, text=True, timeout=300)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(said) == 1, proc.stderr[-2000:]
    assert said[0].startswith("error: setting spark.speculation=true") and "spark.speculation=false" in said[0]
