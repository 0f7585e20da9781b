"""Exact evaluation of the factorised model (training.models.factorised), under LocSens's protocol
and metric names (training.evaluate.locsens, docs/evaluation.md).

The score splits into inner products, so nothing is scored triplet by triplet: tagging is
``tag_queries @ tag_keys.T`` (one matrix product per block of images, every tag at once) and
retrieval is ``retrieval_queries @ image_keys.T``, a maximum-inner-product search over the
normalised gallery embeddings that an inner-product index could serve as well. The constants
each side leaves out (per image for tagging, per query for retrieval) do not change a ranking.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from training.evaluate.protocol import evaluate_protocol
from training.ranks import Ranks
from training.evaluate.topk import chunked_top_k, top_k
from training.models.factorised import FactorisedNet
from training.models.locations import normalise_location


def _as(x, device, dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


@torch.no_grad()
def tag_images_masked(net: FactorisedNet, images: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor, k: int,
                      pairs: int, excludes: Sequence[Optional[torch.Tensor]],
                      location_weight: Optional[float] = None) -> list[np.ndarray]:
    """Each image's top-k tags at its location, once per tag mask, from one scoring pass."""
    queries = net.tag_queries(images, loc, location_weight)
    keys = net.tag_keys(tag_table)
    return chunked_top_k(lambda rows: queries[rows] @ keys.T, queries.shape[0], keys.shape[0], k,
                         pairs // max(keys.shape[0], 1), excludes)


@torch.no_grad()
def retrieve_images(net: FactorisedNet, gallery: torch.Tensor, query_tags: torch.Tensor, query_loc: torch.Tensor,
                    tag_table: torch.Tensor, k: int = 10, pairs: int = 1 << 20,
                    location_weight: Optional[float] = None) -> np.ndarray:
    """Each (tag, location) query's top-k gallery rows: one inner-product search over the normalised
    gallery embeddings."""
    queries = net.retrieval_queries(tag_table[query_tags], query_loc, location_weight)
    keys = net.image_keys(gallery)
    return top_k(queries, keys, k, chunk=max(1, pairs // max(keys.shape[0], 1)))


def evaluate_factorised(net: FactorisedNet, split: dict, tag_table: np.ndarray | torch.Tensor, *,
                        place_mask: Optional[np.ndarray] = None, zero_location: bool = False,
                        ks: Sequence[int] = (1, 10, 50), min_images: int = 10, seed: int = 0,
                        max_queries: Optional[int] = None, pairs: int = 1 << 20, device: Optional[str] = None,
                        tagging: bool = True, ranks: Optional[Ranks] = None, **_) -> dict[str, float]:
    """Tagging (with and without place names) and location-sensitive retrieval on one split, with
    the metrics of :func:`training.evaluate.locsens.evaluate_locsens` (same arguments, the same
    split over ``ranks``; settings it does not use, such as ``mode``, are accepted and ignored: its
    scoring is exact and cheap). ``zero_location`` drops every location term (f(l) = 0: MCC's
    cosine with learned tag biases). Scores are computed in the network's dtype."""
    param = next(net.parameters())
    dev = torch.device(device) if device else param.device
    was_training = net.training
    try:
        return _evaluate(net.eval().to(dev), split, tag_table, dev, param.dtype, place_mask, zero_location, ks,
                         min_images, seed, max_queries, pairs, tagging, ranks or Ranks.current())
    finally:
        net.train(was_training)


def _evaluate(net, split, tag_table, dev, dtype, place_mask, zero_location, ks, min_images, seed, max_queries,
              pairs, tagging, ranks: Ranks) -> dict[str, float]:
    tags = _as(tag_table.cpu() if torch.is_tensor(tag_table) else tag_table, dev, dtype)   # normalised by the net
    images = _as(split["embedding"], dev, dtype)
    lat, lon = np.asarray(split["latitude"]), np.asarray(split["longitude"])
    loc = normalise_location(_as(lat, dev, dtype), _as(lon, dev, dtype))
    weight = 0.0 if zero_location else None

    def rank_tags(mine: slice, k: int, masks: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
        excludes = [None if m is None else torch.as_tensor(m, device=dev) for m in masks]
        return tag_images_masked(net, images[mine], loc[mine], tags, k, pairs, excludes, location_weight=weight)

    def rank_gallery(rows: np.ndarray, query_tags: np.ndarray) -> np.ndarray:
        return retrieve_images(net, images, torch.as_tensor(query_tags, device=dev), loc[rows], tags, 10, pairs,
                               location_weight=weight)

    return evaluate_protocol(split["truth"], lat, lon, int(tags.shape[0]), rank_tags=rank_tags,
                             rank_gallery=rank_gallery, place_mask=place_mask, ks=ks, min_images=min_images,
                             seed=seed, max_queries=max_queries, tagging=tagging, ranks=ranks)
