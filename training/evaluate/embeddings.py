"""Evaluation of exported embeddings (docs/evaluation.md): tagging and retrieval, with one MLflow run.

Ranking is chunked matrix products on the available device keeping only the top k (500k test
images x 100k tags never exists as one matrix); the metrics themselves are
:mod:`common.metrics`, shared with the frequency baselines. Every score compares image and
tag embeddings the way the model was trained to (the manifest's ``score``).

    python -m training.evaluate embeddings_dir=outputs/mcc/embeddings
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common import metrics as M
from common.embeddings import (EmbeddingsManifest, arrow_to_embeddings, read_image_embeddings,
                               read_tag_embeddings)
from training.data.shards import place_mask
from training.evaluate.topk import top_k

log = logging.getLogger(__name__)


def _prepare(x: np.ndarray | torch.Tensor, kind: str, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.array(x, dtype=np.float32)).to(device)  # a writable copy
    return F.normalize(t, dim=1) if kind == "cosine" else t


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def evaluate_embeddings(embeddings_dir: str | Path, *, shards_dir: Optional[str | Path] = None,
                        split: str = "test", ks: Sequence[int] = (1, 10, 50), min_images: int = 10,
                        seed: int = 0, chunk: int = 4096, upper_bound: bool = True,
                        max_queries: Optional[int] = None, device: Optional[str] = None) -> dict[str, float]:
    """All the metrics (docs/evaluation.md) of one model's exported embeddings on ``split``, under stable names.
    ``max_queries``: the same seeded subsample of location-sensitive queries as every other model
    (:func:`common.metrics.location_queries`)."""
    manifest = EmbeddingsManifest.read(embeddings_dir)
    shards_dir = shards_dir or manifest.extra.get("shards_dir")
    dev = torch.device(device) if device else default_device()
    table = read_image_embeddings(embeddings_dir, split)
    truth = M.TagSets.from_arrow(table.column("tag_ids"))
    lat, lon = table.column("latitude").to_numpy(), table.column("longitude").to_numpy()
    tag_vectors, _ = read_tag_embeddings(embeddings_dir)
    num_tags = tag_vectors.shape[0]
    images = _prepare(arrow_to_embeddings(table.column("embedding")), manifest.score, dev)
    tags = _prepare(tag_vectors, manifest.score, dev)
    out: dict[str, float] = {"eval/images": float(len(truth)), "eval/tags": float(num_tags)}

    # Tagging, with and without place names (supplement Table 2).
    kmax = min(max(ks), num_tags)
    ks = [k for k in ks if k <= kmax]
    ranked = top_k(images, tags, kmax, chunk)
    out.update(M.tagging_metrics(ranked, truth, num_tags, ks))
    places = place_mask(shards_dir) if shards_dir else np.zeros(num_tags, dtype=bool)
    if places.any():
        exclude = torch.as_tensor(places, device=dev)
        ranked_np = top_k(images, tags, kmax, chunk, exclude=exclude)
        out.update(M.tagging_metrics(ranked_np, truth.without(places), num_tags,
                                     [k for k in ks if k <= ranked_np.shape[1]], suffix=M.NOPLACES))

    # Location-agnostic retrieval: per-tag top 10 over the split's images.
    query_tags = M.retrieval_tags(truth, num_tags, min_images)
    per_tag = top_k(tags[torch.as_tensor(query_tags, device=dev)], images, 10, chunk)
    out[M.AGNOSTIC_P10] = M.p_at_10_agnostic(per_tag, query_tags, truth, num_tags)
    out["retrieval/P@10_chance"] = M.p_at_10_chance(query_tags, truth, num_tags)
    out["retrieval/queries_tags"] = float(query_tags.size)

    # Location-sensitive retrieval: the same per-tag top 10 for every query location.
    q_rows, q_tags = M.location_queries(truth, num_tags, seed, min_images, max_queries)
    position = np.full(num_tags, -1, dtype=np.int64)
    position[query_tags] = np.arange(query_tags.size)
    out.update(M.location_retrieval_metrics(per_tag[position[q_tags]], q_rows, q_tags, truth, lat, lon, num_tags,
                                            place_mask=places))
    if upper_bound:
        ub = M.upper_bound_p_at_10_by_distance(q_tags, lat[q_rows], lon[q_rows], truth, lat, lon, num_tags)
        out.update({f"upper_bound/P@10_{g}": v for g, v in ub.items()})
    return out
