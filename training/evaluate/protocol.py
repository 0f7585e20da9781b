"""The evaluation protocol (docs/evaluation.md) around a model's two rankers, written once for
every location-sensitive model (LocSens exact or reranked, the factorised model).

A model supplies how it ranks tags for a block of test images (once per tag mask: all tags, and
place names removed) and how it ranks the gallery for a block of retrieval queries; the protocol
chooses the queries, splits the work over the ranks of a process group
(:mod:`training.ranks`), and computes the metrics under their stable names on rank 0.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from common import metrics as M
from training.ranks import Ranks

#: (rows of the test split, k, masks: None or bool over tags removed) -> one (n, <=k) ranking per mask.
TagRanker = Callable[[slice, int, Sequence[Optional[np.ndarray]]], Sequence[np.ndarray]]
#: (query image rows, query tags) -> (Q, 10) gallery rows, best first.
GalleryRanker = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluate_protocol(truth: M.TagSets, lat: np.ndarray, lon: np.ndarray, num_tags: int, *, rank_tags: TagRanker,
                      rank_gallery: GalleryRanker, place_mask: Optional[np.ndarray] = None,
                      ks: Sequence[int] = (1, 10, 50), min_images: int = 10, seed: int = 0,
                      max_queries: Optional[int] = None, tagging: bool = True,
                      ranks: Ranks = Ranks()) -> dict[str, float]:
    """Tagging (with and without place names) and location-sensitive retrieval on one split; the
    metrics on rank 0, an empty dict on the other ranks (each must call this with the same inputs)."""
    out: dict[str, float] = {"eval/images": float(len(truth)), "eval/tags": float(num_tags)}
    kmax = min(max(ks), num_tags)
    ks = [k for k in ks if k <= kmax]
    if tagging:
        places = place_mask is not None and bool(np.any(place_mask))
        masks = [None] + ([np.asarray(place_mask, dtype=bool)] if places else [])
        ranked = [ranks.gather(p) for p in rank_tags(ranks.share(len(truth)), kmax, masks)]
        if ranks.is_zero:
            out.update(M.tagging_metrics(ranked[0], truth, num_tags, ks))
            if places:
                out.update(M.tagging_metrics(ranked[1], truth.without(place_mask), num_tags,
                                             [k for k in ks if k <= ranked[1].shape[1]], suffix=M.NOPLACES))

    q_rows, q_tags = M.location_queries(truth, num_tags, seed, min_images, max_queries)
    if q_rows.size:
        mine = ranks.share(q_rows.size)
        retrieved = ranks.gather(rank_gallery(q_rows[mine], q_tags[mine]))
        if ranks.is_zero:
            out.update(M.location_retrieval_metrics(retrieved, q_rows, q_tags, truth, lat, lon, num_tags, place_mask))
    else:
        out[M.QUERIES] = 0.0
    return out if ranks.is_zero else {}
