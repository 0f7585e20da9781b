"""Exact, batched LocSens evaluation (docs/evaluation.md): tagging against every tag, retrieval against every image.

LocSens has no embedding space to search: every (image, tag, location) triplet must be scored.
What can be shared is shared: the first MLP layer splits by modality, so the image part
(``W_i p_i + W_l p_l + b`` for tagging) is computed once per test image, the tag part
(``W_t p_t``) once per vocabulary tag, and only GroupNorm and the remaining layers run per pair,
``pairs`` at a time, keeping each row's top k. The authors' way (a batch of V copies of the image
and location per image, every projection recomputed) is :func:`tag_images_naive`, kept as the
benchmark's baseline and as the reference in tests.

The metrics are :mod:`common.metrics`, shared with MCC and the frequency baselines, under the
same names.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from training.evaluate.protocol import evaluate_protocol
from training.ranks import Ranks
from training.evaluate.rerank import (PlacePrior, RerankSettings, build_gallery_indexes, rank_candidates,
                                      retrieval_candidates, shortlist_tags)
from training.evaluate.topk import chunked_top_k
from training.models.locsens import LocSensNet
from training.models.locations import normalise_location


def _rank(net: LocSensNet, query_part: torch.Tensor, key_part: torch.Tensor, k: int, pairs: int,
          excludes: Sequence[Optional[torch.Tensor]] = (None,)) -> list[np.ndarray]:
    """Top-k keys per query, scoring head(query_part[q] + key_part[j]) for every pair once
    (``pairs`` at a time), ranked once per entry of ``excludes``."""
    return chunked_top_k(lambda rows: net.head(query_part[rows, None, :] + key_part[None, :, :]),
                         query_part.shape[0], key_part.shape[0], k, pairs // max(key_part.shape[0], 1), excludes)


def _as(x, device) -> torch.Tensor:
    """A float32 copy on ``device`` (inputs are often read-only views of Arrow buffers)."""
    return torch.tensor(np.asarray(x), dtype=torch.float32, device=device)


@torch.no_grad()
def tag_images(net: LocSensNet, images: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor, k: int = 50,
               pairs: int = 1 << 20, exclude: Optional[torch.Tensor] = None,
               location_weight: Optional[float] = None) -> np.ndarray:
    """Each image's top-k tags at its location: (N, k) vocabulary indices, best first."""
    return tag_images_masked(net, images, loc, tag_table, k, pairs, [exclude], location_weight)[0]


@torch.no_grad()
def tag_images_masked(net: LocSensNet, images: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor, k: int,
                      pairs: int, excludes: Sequence[Optional[torch.Tensor]],
                      location_weight: Optional[float] = None) -> list[np.ndarray]:
    """:func:`tag_images` once per tag mask (e.g. all tags, and all but place names), from one
    scoring pass: the places-omitted table costs a second top-k, not a second pass through the MLP."""
    query = net.image_part(images) + net.location_part(loc, location_weight)
    return _rank(net, query, net.tag_part(tag_table), k, pairs, excludes)


@torch.no_grad()
def retrieve_images(net: LocSensNet, gallery: torch.Tensor, query_tags: torch.Tensor, query_loc: torch.Tensor,
                    tag_table: torch.Tensor, k: int = 10, pairs: int = 1 << 20,
                    location_weight: Optional[float] = None) -> np.ndarray:
    """Each (tag, location) query's top-k gallery images: (Q, k) gallery rows, best first."""
    query = net.tag_part(tag_table[query_tags]) + net.location_part(query_loc, location_weight)
    return _rank(net, query, net.image_part(gallery), k, pairs)[0]


@torch.no_grad()
def tag_images_naive(net: LocSensNet, images: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor,
                     k: int = 50, location_weight: Optional[float] = None) -> np.ndarray:
    """The authors' scoring: per image, a batch of V copies of (image, location) with every tag."""
    out = []
    v = tag_table.shape[0]
    for i in range(images.shape[0]):
        scores = net(images[i].expand(v, -1), tag_table, loc[i].expand(v, -1), location_weight)
        out.append(scores.topk(min(k, v)).indices.cpu().numpy())
    return np.stack(out)


@torch.no_grad()
def reranked_tags(net: LocSensNet, images: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor, k: int,
                  pairs: int, excludes: Sequence[Optional[torch.Tensor]], shortlist: int,
                  location_weight: Optional[float] = None, extra: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
    """:func:`tag_images_masked` over each image's shortlist: its ``shortlist`` best tags by MCC's
    cosine under each mask (and the ``extra`` candidate lists), united and scored once
    (:func:`training.evaluate.rerank.shortlist_tags`)."""
    query = net.image_part(images) + net.location_part(loc, location_weight)
    cand = shortlist_tags(images, tag_table, shortlist, excludes, extra=extra)
    return _rank_shortlists(net, query, lambda used: net.tag_part(tag_table[used]), cand, k, pairs, excludes)


@torch.no_grad()
def reranked_images(net: LocSensNet, gallery: torch.Tensor, query_tags: torch.Tensor, query_loc: torch.Tensor,
                    tag_table: torch.Tensor, candidates: np.ndarray, k: int = 10, pairs: int = 1 << 20,
                    location_weight: Optional[float] = None) -> np.ndarray:
    """:func:`retrieve_images` over each query's candidate gallery rows (-1: none)."""
    query = net.tag_part(tag_table[query_tags]) + net.location_part(query_loc, location_weight)
    return _rank_shortlists(net, query, lambda used: net.image_part(gallery[used]), candidates, k, pairs)[0]


def _rank_shortlists(net: LocSensNet, query: torch.Tensor, key_part, candidates: np.ndarray, k: int, pairs: int,
                     excludes: Sequence[Optional[torch.Tensor]] = (None,)) -> list[np.ndarray]:
    """Rank each query's candidates (-1: none) by LocSens's head; ``key_part(ids)`` gives the
    first-layer part of the keys ``ids``, computed once for each key some shortlist holds (not for
    the whole vocabulary or gallery: a batch of queries pays only for its own candidates)."""
    valid = candidates >= 0
    used, where = np.unique(candidates[valid], return_inverse=True)
    local = np.full(candidates.shape, -1, dtype=np.int64)
    local[valid] = where
    ids = torch.as_tensor(used, device=query.device)
    keys = key_part(ids)
    masks = [None if e is None else e[ids] for e in excludes]
    chunk = max(1, pairs // max(candidates.shape[1], 1))
    ranked = rank_candidates(lambda rows, c: net.head(query[rows, None, :] + keys[c]), local, k, chunk,
                             query.device, masks)
    # -1 (a slot a short shortlist leaves empty) stays -1: used[-1] would be a real photo or tag.
    return [np.where(r >= 0, used[np.maximum(r, 0)], -1) if used.size else r for r in ranked]


PRECISIONS = {"32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
              "16": torch.float16, "16-mixed": torch.float16}


def scoring_precision(precision: str | int, device: torch.device | str) -> str:
    """``evaluation.precision`` for ``device``: ``auto`` is bf16 on a GPU that has it (several
    times faster than float32 there), else 32 (a CPU's bf16 is no faster)."""
    key = str(precision)
    if key == "auto":
        return "bf16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    if key not in PRECISIONS:
        raise ValueError(f"evaluation.precision={precision!r}: use auto or one of {sorted(PRECISIONS)}")
    return key


def refined_k(k: int, keys: int) -> int:
    """How many of a low-precision ranking's best are scored again in float32 to keep its top ``k``:
    bf16 rounds the first layers' sums to 3 significant digits, which reorders near-ties (measured
    on a trained model: 1.6% of top-10 tags changed, retrieval P@10 moved up to 0.8 pt); a true
    top-k key that bf16 pushes beyond twice k (and 20 more) is rare."""
    return min(keys, max(2 * k, k + 20))


def autocast(device: torch.device, precision: str | int):
    """The scoring's precision (``evaluation.precision``): 32, or mixed bf16 / 16 (16 on GPU only)."""
    key = scoring_precision(precision, device)
    dtype = PRECISIONS[key]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError(f"evaluation.precision={precision}: float16 needs a GPU; use bf16 on {device.type}")
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def exact_tags(net: LocSensNet, images: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor, k: int,
               pairs: int, excludes: Sequence[Optional[torch.Tensor]], location_weight: Optional[float],
               precision: str) -> list[np.ndarray]:
    """:func:`tag_images_masked` with every tag scored in ``precision``; in bf16 / 16, each image's
    :func:`refined_k` best are scored again in float32 for the top ``k``."""
    if PRECISIONS[precision] is None:
        return tag_images_masked(net, images, loc, tag_table, k, pairs, excludes, location_weight)
    with autocast(images.device, precision):
        first = tag_images_masked(net, images, loc, tag_table, refined_k(k, len(tag_table)), pairs, excludes,
                                  location_weight)
    query = net.image_part(images) + net.location_part(loc, location_weight)
    return [_rank_shortlists(net, query, lambda used: net.tag_part(tag_table[used]), cand, k, pairs)[0]
            for cand in first]


@torch.no_grad()
def exact_images(net: LocSensNet, gallery: torch.Tensor, query_tags: torch.Tensor, query_loc: torch.Tensor,
                 tag_table: torch.Tensor, k: int, pairs: int, location_weight: Optional[float],
                 precision: str) -> np.ndarray:
    """:func:`retrieve_images` with every image scored in ``precision``; in bf16 / 16, each query's
    :func:`refined_k` best are scored again in float32 for the top ``k``."""
    if PRECISIONS[precision] is None:
        return retrieve_images(net, gallery, query_tags, query_loc, tag_table, k, pairs, location_weight)
    with autocast(gallery.device, precision):
        cand = retrieve_images(net, gallery, query_tags, query_loc, tag_table, refined_k(k, len(gallery)), pairs,
                               location_weight)
    return reranked_images(net, gallery, query_tags, query_loc, tag_table, cand, k, pairs, location_weight)


def evaluate_locsens(net: LocSensNet, split: dict, tag_table: np.ndarray | torch.Tensor, *,
                     place_mask: Optional[np.ndarray] = None, zero_location: bool = False,
                     ks: Sequence[int] = (1, 10, 50), min_images: int = 10, seed: int = 0,
                     max_queries: Optional[int] = None, pairs: int = 1 << 20,
                     device: Optional[str] = None, tagging: bool = True, mode: str = "exact",
                     rerank: Optional[Mapping[str, Any] | RerankSettings] = None, precision: str | int = "32",
                     ranks: Optional[Ranks] = None, place_prior: Optional[PlacePrior] = None) -> dict[str, float]:
    """Tagging (with and without place names) and location-sensitive retrieval on one split.

    ``split`` is :meth:`training.data.embeddings.LocSensDataModule.split_arrays`. ``max_queries``
    subsamples the retrieval queries (seeded, :func:`common.metrics.location_queries`: the same
    subsample for every model on the same split) when scoring every query against every image is
    too slow for the machine; the number used is reported as ``retrieval/queries_locations``.
    ``zero_location``: the zeroed-locations variant (its location representation times 0).
    ``tagging=False`` skips tagging (the paper reports the sigma snapshots on retrieval only).
    ``mode``: ``exact`` scores every triplet, ``rerank`` only shortlisted ones (``rerank``
    settings, :mod:`training.evaluate.rerank`). ``precision``: see :func:`autocast`.

    Every rank of ``ranks`` (default: the running process group, if any) must call this with the
    same inputs: each ranks its share of the queries, and rank 0 returns the metrics (the others
    return an empty dict).
    """
    if mode not in ("exact", "rerank"):
        raise ValueError(f"evaluation.mode={mode!r}: use exact or rerank")
    dev = torch.device(device) if device else next(net.parameters()).device
    settings = rerank if isinstance(rerank, RerankSettings) else RerankSettings.from_config(rerank)
    if mode == "rerank" and settings.place_tags and place_prior is None:
        raise ValueError("evaluation.rerank.place_tags needs the training photos' places (a PlacePrior)")
    was_training = net.training
    try:
        return _evaluate(net.eval().to(dev), split, tag_table, dev, place_mask, zero_location, ks, min_images,
                         seed, max_queries, pairs, tagging, settings if mode == "rerank" else None,
                         ranks or Ranks.current(), place_prior, scoring_precision(precision, dev))
    finally:
        net.train(was_training)


@torch.no_grad()
def _evaluate(net, split, tag_table, dev, place_mask, zero_location, ks, min_images, seed, max_queries,
              pairs, tagging, rerank: Optional[RerankSettings], ranks: Ranks,
              place_prior: Optional[PlacePrior], precision: str) -> dict[str, float]:
    """The protocol with this model's rankings. Exact rankings in bf16 / 16 are made in two passes:
    every pair in that precision, then each query's :func:`refined_k` best again in float32."""
    num_tags = int(np.asarray(tag_table).shape[0]) if not torch.is_tensor(tag_table) else tag_table.shape[0]
    tags = _as(tag_table, dev)               # normalised inside the network, like the images
    images = _as(split["embedding"], dev)
    lat, lon = np.asarray(split["latitude"]), np.asarray(split["longitude"])
    loc = normalise_location(_as(lat, dev), _as(lon, dev))
    weight = 0.0 if zero_location else None

    def rank_tags(mine: slice, k: int, masks: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
        excludes = [None if m is None else torch.as_tensor(m, device=dev) for m in masks]
        if rerank is None:
            return exact_tags(net, images[mine], loc[mine], tags, k, pairs, excludes, weight, precision)
        with autocast(dev, precision):
            extra = [] if not rerank.place_tags else [
                place_prior.top_tags(lat[mine], lon[mine], rerank.place_photos, rerank.place_tags, exclude=m)
                for m in masks]
            return reranked_tags(net, images[mine], loc[mine], tags, k, pairs, excludes,
                                 min(max(rerank.tags, k), num_tags),   # A@k needs k candidates
                                 location_weight=weight, extra=extra)

    def rank_gallery(rows: np.ndarray, query_tags: np.ndarray) -> np.ndarray:
        qt = torch.as_tensor(query_tags, device=dev)
        if rerank is None:
            return exact_images(net, images, qt, loc[rows], tags, 10, pairs, weight, precision)
        ann, spatial = build_gallery_indexes(np.asarray(split["embedding"]), lat, lon, rerank)
        cand = retrieval_candidates(ann, spatial, np.asarray(tag_table, dtype=np.float32), query_tags, lat[rows],
                                    lon[rows], rerank)
        with autocast(dev, precision):
            return reranked_images(net, images, qt, loc[rows], tags, cand, 10, pairs, location_weight=weight)

    return evaluate_protocol(split["truth"], lat, lon, num_tags, rank_tags=rank_tags, rank_gallery=rank_gallery,
                             place_mask=place_mask, ks=ks, min_images=min_images, seed=seed,
                             max_queries=max_queries, tagging=tagging, ranks=ranks)
