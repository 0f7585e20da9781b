"""A small MCC-style embeddings export written through ``common.embeddings``'s schemas, for LocSens
tests. Images are noisy copies of their tags' prototype vectors plus a location signature, so a
small LocSens learns something in a few steps. Not production code."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import torch

from common.embeddings import (MANIFEST_NAME, TAGS_FILE, EmbeddingsManifest, embeddings_to_arrow,
                               image_schema, tag_schema)
from training.data.embeddings import LocSensDataModule
from training.models.locsens import LocSensNet

TOWNS = [(48.85, 2.35), (-33.87, 151.21), (35.68, 139.69), (-12.05, -77.04), (59.91, 10.75)]


def write_embeddings(out: Path, *, dim: int = 32, num_tags: int = 40, rows=(("train", 600), ("val", 120),
                     ("test", 150)), seed: int = 0, row_group: int = 100) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    protos = rng.normal(size=(num_tags, dim)).astype(np.float32)
    town_vec = rng.normal(size=(len(TOWNS), dim)).astype(np.float32)
    pq.write_table(pa.Table.from_arrays([pa.array(np.arange(num_tags, dtype=np.int32)),
                                         pa.array([f"tag{i}" for i in range(num_tags)]),
                                         embeddings_to_arrow(protos, dim)], schema=tag_schema(dim)), out / TAGS_FILE)
    splits, pid, longest = {}, 1, 1
    for split, n in rows:
        town = rng.integers(0, len(TOWNS), n)
        lat = np.array([TOWNS[t][0] for t in town]) + rng.normal(0, 0.05, n)
        lon = np.array([TOWNS[t][1] for t in town]) + rng.normal(0, 0.05, n)
        # Tags: one town tag (0..4) often, plus 1-3 content tags (5..V-1).
        tags = []
        for i in range(n):
            t = set(rng.choice(np.arange(len(TOWNS), num_tags), size=rng.integers(1, 4), replace=False).tolist())
            if rng.random() < 0.7:
                t.add(int(town[i]))
            tags.append(sorted(int(x) for x in t))
        longest = max([longest, *map(len, tags)])
        emb = np.stack([protos[t].mean(0) for t in tags]) + 0.5 * town_vec[town] + rng.normal(0, 0.3, (n, dim))
        table = pa.Table.from_arrays([
            pa.array(np.arange(pid, pid + n, dtype=np.int64)), pa.array([split] * n),
            embeddings_to_arrow(emb.astype(np.float32), dim), pa.array(lat), pa.array(lon),
            pa.array(tags, pa.list_(pa.int32()))], schema=image_schema(dim))
        pid += n
        rel = f"images/{split}/part-r00000-of-00001.parquet"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / rel, row_group_size=row_group)
        splits[split] = {"files": [{"path": rel, "rows": n}], "rows": n}
    manifest = EmbeddingsManifest(model="MCC", score="cosine", dim=dim, num_tags=num_tags, splits=splits,
                                  export_id="fixture", family="mcc", max_tags=longest)
    (out / MANIFEST_NAME).write_text(manifest.to_json())
    return out


#: The small evaluation fixture: V tags, N test images of DIM-d embeddings.
V, N, DIM = 24, 80, 16


def tiny_net(seed: int = 0, dim: int = DIM) -> LocSensNet:
    """A small LocSens network with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return LocSensNet(input_dim=dim, modality_dim=32, hidden=(64, 32), groups=8).eval()


def tiny_split(tmp_path: Path) -> tuple[dict, np.ndarray]:
    """(the test split's arrays, tag table) of a fresh fixture export with V tags and N images."""
    directory = write_embeddings(tmp_path / "emb", dim=DIM, num_tags=V, rows=(("test", N),))
    dm = LocSensDataModule(str(directory))
    return dm.split_arrays("test"), dm.tag_embeddings()


def place_names_mask(v: int = V, places: int = 6) -> np.ndarray:
    """The first ``places`` of ``v`` tags marked as place names."""
    mask = np.zeros(v, dtype=bool)
    mask[:places] = True
    return mask
