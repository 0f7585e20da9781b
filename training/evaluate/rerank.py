"""Shortlist and rerank (``evaluation.mode=rerank``): LocSens scores a few candidates per query
instead of the whole vocabulary or gallery.

- Tagging: the ``tags`` best tags of each image by MCC's image-tag cosine (one matrix product),
  reranked by LocSens at the image's location. The places-omitted table shortlists with place
  names masked, so that it still has ``tags`` candidates.
- Retrieval: the ``images`` gallery images nearest the query tag's embedding in an approximate
  nearest-neighbour index (:mod:`training.index.ann`), united with the ``nearby`` images taken
  nearest the query location (:mod:`training.index.spatial`), reranked by LocSens.

With ``tags`` = V (``images`` = N) the shortlist is everything and the ranking is exact's (tested).
The trade (recall of exact's top 10, metrics, speed) is measured by ``bench/rerank_sweep.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from common.metrics import TagSets
from training.evaluate.topk import Progress, chunked_top_k
from training.index.ann import AnnIndex, AnnSettings, normalised
from training.index.spatial import SpatialIndex


@dataclass(frozen=True)
class RerankSettings:
    """Candidate counts and the image index (``evaluation.rerank``)."""

    tags: int = 100       # K: tags shortlisted per image (at least the largest A@k's k)
    images: int = 100     # retrieval candidates from the tag's nearest images in embedding space
    nearby: int = 50      # retrieval candidates from the photos taken nearest the query location
    index: str = "auto"   # auto | flat | hnsw | ivf | ivfpq (training.index.ann)
    place_tags: int = 0   # tagging: plus the tags most frequent among the training photos nearest the image
    place_photos: int = 100   # ... among this many of them (PlacePrior)

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]]) -> "RerankSettings":
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"evaluation.rerank: unknown setting(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        out = cls(**cfg)
        if out.place_tags < 0 or out.place_photos < 1:
            raise ValueError(f"evaluation.rerank: place_tags must be >= 0 and place_photos >= 1, got {out}")
        if out.tags < 1 or out.images < 0 or out.nearby < 0 or max(out.images, out.nearby) < 10:
            raise ValueError(f"evaluation.rerank: tags must be >= 1, and images or nearby >= 10 (P@10 needs 10 "
                             f"distinct candidates), got {out}")
        return out


class PlacePrior:
    """The tags most frequent among the (training) photos taken nearest a place: the frequency
    baselines' town prior, found from coordinates alone, so it serves any location (a test photo
    carries no town name, a search query neither). Adds to the tagging shortlist the place's tags
    that an image's content alone would not suggest."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, truth: TagSets, num_tags: int):
        self.spatial, self.truth, self.num_tags = SpatialIndex(lat, lon), truth, int(num_tags)

    def top_tags(self, lat: np.ndarray, lon: np.ndarray, photos: int, k: int,
                 exclude: Optional[np.ndarray] = None, chunk: int = 4096) -> np.ndarray:
        """(Q, k) for each location, the ``k`` tags most often on its ``photos`` nearest photos (ties
        by tag index; -1 where fewer), ``exclude`` (bool over tags) left out."""
        lat, lon = np.atleast_1d(lat), np.atleast_1d(lon)
        out = np.full((lat.size, k), -1, dtype=np.int64)
        v = np.int64(self.num_tags)
        for s in range(0, lat.size, chunk):
            rows, _ = self.spatial.nearest(lat[s:s + chunk], lon[s:s + chunk], photos)
            near = self.truth.take(rows.ravel())
            query = near.rows() // rows.shape[1]
            tags = near.values
            if exclude is not None:
                keep = ~np.asarray(exclude, dtype=bool)[tags]
                query, tags = query[keep], tags[keep]
            keys, counts = np.unique(query * v + tags, return_counts=True)
            q, t = keys // v, keys % v
            order = np.lexsort((t, -counts, q))                     # per query: most frequent first
            q, t = q[order], t[order]
            first = np.searchsorted(q, q, side="left")
            pos = np.arange(q.size) - first
            keep = pos < k
            out[s + q[keep], pos[keep]] = t[keep]
        return out


def shortlist_tags(images: torch.Tensor, tag_table: torch.Tensor, k: int,
                   excludes: Sequence[Optional[torch.Tensor]] = (None,), chunk: int = 4096,
                   extra: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Each image's shortlist: its ``k`` best tags by cosine of the MCC embeddings under each tag
    mask, united (-1 fills repeats). One LocSens pass over the union then serves every mask: with
    place names masked the shortlist still holds ``k`` candidates, and those already in the
    all-tags shortlist (most of them) are scored once. ``extra``: more (N, *) candidate lists
    (-1: none) to unite, e.g. :meth:`PlacePrior.top_tags`."""
    q, t = torch.nn.functional.normalize(images, dim=1), torch.nn.functional.normalize(tag_table, dim=1)
    lists = chunked_top_k(lambda rows: q[rows] @ t.T, q.shape[0], t.shape[0], k, chunk, excludes)
    return compact(dedupe(np.concatenate([*lists, *extra], axis=1)))


def retrieval_candidates(index: AnnIndex, spatial: Optional[SpatialIndex], tag_vectors: np.ndarray,
                         query_tags: np.ndarray, query_lat: np.ndarray, query_lon: np.ndarray,
                         settings: RerankSettings) -> np.ndarray:
    """(Q, C) gallery rows to rerank per query, each row's duplicates replaced by -1: the tag's
    nearest images (one index search per distinct tag) then the query location's nearest photos."""
    parts = []
    if settings.images:
        tags, inverse = np.unique(query_tags, return_inverse=True)
        _, ids = index.search(normalised(tag_vectors[tags]), settings.images)
        parts.append(ids[inverse])
    if settings.nearby and spatial is not None:
        parts.append(spatial.nearest(query_lat, query_lon, settings.nearby)[0])
    cand = np.concatenate(parts, axis=1) if parts else np.zeros((len(query_tags), 0), dtype=np.int64)
    return dedupe(cand)


def dedupe(cand: np.ndarray) -> np.ndarray:
    """Each row's repeated entries (after the first) replaced by -1; order kept."""
    cand = np.asarray(cand, dtype=np.int64).copy()
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, axis=1)
    repeat = np.zeros_like(cand, dtype=bool)
    repeat[:, 1:] = s[:, 1:] == s[:, :-1]
    np.put_along_axis(cand, order, np.where(repeat, -1, s), axis=1)
    return cand


def compact(cand: np.ndarray) -> np.ndarray:
    """Rows' -1 entries moved to the end (order otherwise kept) and all-(-1) trailing columns cut."""
    order = np.argsort(cand < 0, axis=1, kind="stable")
    out = np.take_along_axis(cand, order, axis=1)
    width = int((out >= 0).sum(axis=1).max(initial=0))
    return out[:, :max(width, 1)]


def rank_candidates(score: Callable[[slice, torch.Tensor], torch.Tensor], candidates: np.ndarray, k: int,
                    chunk: int, device: torch.device,
                    excludes: Sequence[Optional[torch.Tensor]] = (None,)) -> list[np.ndarray]:
    """Each query's ``k`` best candidates (best first), once per entry of ``excludes`` (None, or
    bool over keys removed from that ranking, which then keeps at most as many as are left):
    ``score(rows, cand)`` gives the scores of a block of queries against their (rows, C)
    candidates, scored once for every mask (-1 entries are ignored). Every row must hold that many
    allowed candidates."""
    n, c = candidates.shape
    ks = [min(k, c, (int(e.numel() - e.sum()) if e is not None else c)) for e in excludes]
    out = [np.empty((n, kk), dtype=np.int64) for kk in ks]
    progress = Progress(n, f"reranking {c} candidates")
    for s in range(0, n, max(1, chunk)):
        rows = slice(s, s + chunk)
        cand = torch.as_tensor(candidates[rows], device=device)
        valid = cand.clamp(min=0)
        scores = score(rows, valid).float().masked_fill(cand < 0, float("-inf"))
        for o, exclude in zip(out, excludes):
            masked = scores if exclude is None else scores.masked_fill(exclude[valid], float("-inf"))
            o[rows] = cand.gather(1, masked.topk(o.shape[1], dim=1).indices).cpu().numpy()
        progress.update(s + chunk)
    return out


def build_gallery_indexes(gallery: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                          settings: RerankSettings) -> tuple[AnnIndex, SpatialIndex]:
    """The two indexes retrieval shortlists from, over one split's images."""
    return AnnIndex.build(normalised(gallery), AnnSettings(kind=settings.index)), SpatialIndex(lat, lon)


def recall_of(exact: np.ndarray, approx: np.ndarray, k: int = 10) -> float:
    """Mean share (percent) of each row's exact top k found in the approximate top k."""
    e, a = np.asarray(exact)[:, :k], np.asarray(approx)[:, :k]
    if e.shape[0] == 0:
        return float("nan")
    hits = (e[:, :, None] == a[:, None, :]).any(axis=2).sum(axis=1)
    return 100.0 * float((hits / e.shape[1]).mean())

