"""Word vectors for HER's regression targets (docs/method.md).

The paper used GloVe 840B. When a GloVe-format text file is configured, each vocabulary tag gets
its vector from it (missing tags: zero vectors, reported). Otherwise the vectors are learned from
tag co-occurrence in the training split: positive pointwise mutual information with context
distribution smoothing, factorised by truncated SVD (Levy, Goldberg & Dagan, 2015), so HER runs
on any shard directory. The result is cached next to the run, keyed by its inputs.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch

from common.contract import read_manifest, shard_root
from common.files import atomic_write
from common.metrics import TagSets
from training.data.shards import read_split_columns, read_vocab

log = logging.getLogger(__name__)


def load_glove(path: str | Path, tags: Sequence[str], dim: int) -> np.ndarray:
    """(len(tags), dim) float32 from a GloVe text file (``word v1 ... vdim`` per line); tags not in
    the file get zeros. Words with spaces (GloVe 840B has some) are handled."""
    index = {t: i for i, t in enumerate(tags)}
    out = np.zeros((len(tags), dim), dtype=np.float32)
    found = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.rstrip("\n").rstrip().split(" ")
            if len(parts) < dim + 1:
                continue
            word = " ".join(parts[:-dim])
            i = index.get(word)
            if i is not None and not out[i].any():
                out[i] = np.asarray(parts[-dim:], dtype=np.float32)
                found += 1
    log.info("GloVe %s: %d of %d tags found", path, found, len(tags))
    if found < len(tags):
        log.warning("%d tags have no GloVe vector (zero vectors)", len(tags) - found)
    return out


def cooccurrence_counts(tags: TagSets, num_tags: int, chunk_rows: int = 1 << 20):
    """Sparse (V, V) counts of images in which two different tags occur together."""
    total = sp.csr_matrix((num_tags, num_tags), dtype=np.float64)
    for s in range(0, len(tags), chunk_rows):
        part = tags.take(np.arange(s, min(s + chunk_rows, len(tags))))
        x = sp.csr_matrix((np.ones(part.values.size), part.values, part.offsets),
                          shape=(len(part), num_tags))
        total = total + (x.T @ x).tocsr()
    total.setdiag(0)
    total.eliminate_zeros()
    return total


def ppmi(counts, smoothing: float = 0.75):
    """Positive PMI of a sparse co-occurrence matrix, context counts raised to ``smoothing``."""
    c = counts.tocoo()
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    col_sum = np.asarray(counts.sum(axis=0)).ravel() ** smoothing
    pmi = np.log(c.data * col_sum.sum() / (row_sum[c.row] * col_sum[c.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=counts.shape)


def cooccurrence_vectors(tags: TagSets, num_tags: int, dim: int = 300, smoothing: float = 0.75,
                         seed: int = 0) -> np.ndarray:
    """(V, dim) float32 unit vectors: PPMI of tag co-occurrence, truncated SVD, U * sqrt(S).

    Tags that co-occur with nothing get a random unit vector (seeded) so that no target is zero.
    """
    m = ppmi(cooccurrence_counts(tags, num_tags), smoothing)
    k = min(dim, num_tags - 1)
    rng = np.random.default_rng(seed)
    if k < 1:
        u, s = np.zeros((num_tags, 0)), np.zeros(0)
    elif num_tags <= 2000 or k >= num_tags - 1:
        u, s, _ = np.linalg.svd(m.toarray())
        u, s = u[:, :k], s[:k]
    else:
        u, s, _ = sla.svds(m, k=k, v0=rng.random(num_tags))
    vec = np.zeros((num_tags, dim), dtype=np.float64)
    vec[:, :u.shape[1]] = u * np.sqrt(np.maximum(s, 0))
    norms = np.linalg.norm(vec, axis=1)
    empty = norms < 1e-12
    if empty.any():
        log.warning("%d of %d tags co-occur with no other tag: random word vectors", empty.sum(), num_tags)
        vec[empty] = rng.normal(size=(int(empty.sum()), dim))
        norms = np.linalg.norm(vec, axis=1)
    return (vec / norms[:, None]).astype(np.float32)


def build_word_vectors(shards_dir: str, dim: int = 300, glove_path: Optional[str] = None,
                       smoothing: float = 0.75, seed: int = 0,
                       cache_dir: Optional[str] = None) -> torch.Tensor:
    """The (V, dim) word-vector matrix for a shard directory's vocabulary (used from config)."""
    shards_dir = str(shard_root(shards_dir))
    manifest = read_manifest(shards_dir)
    key = json.dumps({"shards": str(Path(shards_dir).resolve()), "manifest": manifest.to_json(),
                      "dim": dim, "glove": str(glove_path), "smoothing": smoothing, "seed": seed},
                     sort_keys=True)
    cache = None
    if cache_dir:
        cache = Path(cache_dir) / f"word_vectors-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"
        if cache.exists():
            log.info("word vectors from cache %s", cache)
            return torch.from_numpy(np.load(cache))
    if glove_path:
        tags = read_vocab(shards_dir, manifest).column("tag").to_pylist()
        vec = load_glove(glove_path, tags, dim)
    else:
        train = read_split_columns(shards_dir, "train", ["tag_ids"], manifest).column("tag_ids")
        vec = cooccurrence_vectors(TagSets.from_arrow(train), manifest.vocab_size, dim, smoothing, seed)
    if cache is not None:
        buf = io.BytesIO()
        np.save(buf, vec)
        atomic_write(cache, buf.getvalue())  # ranks racing here write the same bytes
    return torch.from_numpy(vec)
