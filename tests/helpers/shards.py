"""A small shard directory written through ``common.contract``, for tests of the training code.

Images are real JPEGs of coloured shapes; each image's "visual" tag names its shape and colour,
so a model can learn something in a few steps. Locations cluster around a few towns whose names
are tags and place names. Not production code: the real shards come from jobs/shard_dataset.py.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from common.contract import (PLACE_NAMES_SCHEMA, SHARD_SCHEMA, VOCAB_SCHEMA, Manifest, ShardFile, SplitInfo,
                             write_manifest)

COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (230, 200, 30)]
SHAPES = ["square", "circle", "triangle"]
TOWNS = [("paris", 48.85, 2.35), ("sydney", -33.87, 151.21), ("tokyo", 35.68, 139.69),
         ("lima", -12.05, -77.04), ("oslo", 59.91, 10.75)]


def _jpeg(rng: np.random.Generator, colour, shape: str, size: int) -> bytes:
    w, h = (size, size) if rng.random() < 0.5 else (int(size * 1.25), size)
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 60, 3)))
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "circle":
        d.ellipse(box, fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


#: A tag that is markup: the pipeline's normalisation keeps < > " / =, so a real vocabulary can hold
#: one; a page that writes tags as HTML would run it (tests/serving/test_web.py).
HOSTILE_TAG = '<img src=x onerror="window.__pwned=1">'


def vocabulary(num_noise: int = 40, hostile: bool = False) -> list[str]:
    """Visual tags, town names and noise tags (the last one :data:`HOSTILE_TAG` with ``hostile``)."""
    visual = [f"{s}{c}" for s in SHAPES for c in ("red", "green", "blue", "yellow")]
    noise = [f"noise{i}" for i in range(num_noise)]
    if hostile:
        noise[-1] = HOSTILE_TAG
    return visual + [t for t, _, _ in TOWNS] + noise


def make_shards(directory: str | Path, *, rows: dict[str, int] | None = None, image_size: int = 40,
                row_group_size: int = 16, files_per_split: int = 2, seed: int = 0,
                num_noise: int = 40, hostile: bool = False) -> Manifest:
    """Write train/val/test shards, vocab, place names and the manifest; return the manifest
    (``hostile``: one noise tag is :data:`HOSTILE_TAG`)."""
    rows = rows or {"train": 96, "val": 40, "test": 48}
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    vocab = vocabulary(num_noise, hostile)
    index = {t: i for i, t in enumerate(vocab)}
    noise = np.array([len(vocab) - num_noise + i for i in range(num_noise)])
    zipf = 1.0 / np.arange(1, num_noise + 1)
    zipf /= zipf.sum()
    counts = np.zeros(len(vocab), dtype=np.int64)
    photo_id = 10_000_000_000  # beyond int32, like real photo ids
    splits = {}
    for split, n in rows.items():
        files = []
        per_file = np.array_split(np.arange(n), files_per_split)
        for f, chunk in enumerate(per_file):
            records = {k: [] for k in SHARD_SCHEMA.names}
            for _ in chunk:
                s, c = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS)))
                town, lat, lon = TOWNS[int(rng.integers(len(TOWNS)))]
                tags = {index[f"{SHAPES[s]}{('red', 'green', 'blue', 'yellow')[c]}"]}
                if rng.random() < 0.7:
                    tags.add(index[town])
                tags.update(int(t) for t in rng.choice(noise, int(rng.integers(0, 3)), replace=False, p=zipf))
                tags = sorted(tags)
                if split == "train":
                    counts[tags] += 1
                photo_id += int(rng.integers(1, 1000))
                records["photo_id"].append(photo_id)
                records["user_nsid"].append(f"{int(rng.integers(100))}@N00")
                records["latitude"].append(float(np.clip(lat + rng.normal(0, 0.3), -90, 90)))
                records["longitude"].append(float(lon + rng.normal(0, 0.3)))
                records["tag_ids"].append(tags)
                records["town"].append(town)
                records["region"].append(None)
                records["country"].append(None)
                records["continent"].append(None)
                records["image"].append(_jpeg(rng, COLOURS[c], SHAPES[s], image_size))
            path = f"{split}/part-{f:05d}.parquet"
            (directory / split).mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pydict(records, schema=SHARD_SCHEMA)
            pq.write_table(table, directory / path, row_group_size=row_group_size)
            meta = pq.ParquetFile(directory / path).metadata
            files.append(ShardFile(path, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]))
        splits[split] = SplitInfo(files)
    pq.write_table(pa.Table.from_pydict(
        {"index": list(range(len(vocab))), "tag": vocab, "count": counts.tolist()}, schema=VOCAB_SCHEMA),
        directory / "vocab.parquet")
    pq.write_table(pa.Table.from_pydict(
        {"name": [t for t, _, _ in TOWNS], "level": ["town"] * len(TOWNS)}, schema=PLACE_NAMES_SCHEMA),
        directory / "place_names.parquet")
    manifest = Manifest(vocab_size=len(vocab), image_size=image_size, splits=splits)
    write_manifest(directory, manifest)
    return manifest


def shards_fixture(**layout):
    """A module-scoped fixture ``shards``: a shard directory written by :func:`make_shards` with
    ``layout`` (rows per split, row group size, files per split), once per test module."""
    @pytest.fixture(scope="module")
    def shards(tmp_path_factory) -> Path:
        directory = tmp_path_factory.mktemp("shards")
        make_shards(directory, **layout)
        return directory

    return shards
