"""The evaluation metrics of docs/evaluation.md, written once for every model and baseline.

Used by the frequency-baselines job and by training evaluation alike. Pure numpy plus
``geographiclib`` (no Spark, no torch): callers rank with whatever they have (a GPU matmul, a
frequency table) and pass the ranked indices here. Everything works on top-k lists, never on a
dense images x tags score matrix, and the heavy parts are chunked.

Conventions:

- Ground truth is a :class:`TagSets` (CSR: ``offsets`` and ``values``), one row per test image.
  A tag counts once per image.
- Every score is a **percentage** (0-100), as in the paper's tables.
- Distances are geodesic on the WGS-84 ellipsoid (:func:`geodesic_km`, ``geographiclib``). For
  speed a vectorised spherical distance decides every pair that is clearly inside or outside a
  threshold; only pairs within :data:`SPHERE_TOLERANCE` of a threshold are measured exactly,
  which gives the same answers as measuring every pair (tested against that).
- Metric names are stable across models (``tagging/A@10``, ``retrieval/P@10_750km``); MLflow
  cannot store ``@``, so log them through :func:`mlflow_metrics` (``tagging/A_at_10``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
from geographiclib.geodesic import Geodesic

#: Location-sensitive retrieval granularities (docs/evaluation.md): street, city, region, country, continent.
GRANULARITIES_KM: dict[str, float] = {
    "1km": 1.0, "25km": 25.0, "200km": 200.0, "750km": 750.0, "2500km": 2500.0,
}
#: Mean Earth radius (IUGG) for the spherical pre-filter.
EARTH_RADIUS_KM = 6371.0088

# Metric names (the functions that build the rest are at the end of this module).
#: The suffix of a metric computed without place names: tagging with place-name tags removed from
#: the ranking, retrieval over the queries whose tag is not a place name.
NOPLACES = "_noplaces"
#: Accuracy cut-offs of the tagging tables.
TAGGING_KS = (1, 10, 50)
#: Location-agnostic retrieval (one query per tag), and the number of location-sensitive queries.
AGNOSTIC_P10 = "retrieval/P@10"
QUERIES = "retrieval/queries_locations"
#: Great-circle distance on that sphere is within 0.6% of the WGS-84 geodesic (measured:
#: ratio 0.9944..1.0045); pairs closer than this relative margin to a threshold are measured exactly.
SPHERE_TOLERANCE = 0.01
_KEY_CHUNK = 1 << 20


# --- ground truth ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TagSets:
    """Each image's set of tag indices, as CSR arrays: row i is ``values[offsets[i]:offsets[i+1]]``."""

    offsets: np.ndarray  # int64, (n + 1,)
    values: np.ndarray   # int64, (offsets[-1],)

    def __post_init__(self):
        offsets = np.asarray(self.offsets, dtype=np.int64)
        values = np.asarray(self.values, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0 or offsets[-1] != values.size:
            raise ValueError("TagSets: offsets must start at 0 and end at len(values)")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("TagSets: offsets must be non-decreasing")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "values", values)

    @classmethod
    def from_lists(cls, rows: Iterable[Sequence[int]]) -> "TagSets":
        """From Python lists (duplicates within a row removed); for tests and small inputs."""
        rows = [sorted(set(int(t) for t in r)) for r in rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        values = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(offsets[-1]))
        return cls(offsets, values)

    @classmethod
    def from_arrow(cls, list_array) -> "TagSets":
        """From a pyarrow ``list<int>`` array or chunked array (e.g. the shards' ``tag_ids``)."""
        if isinstance(list_array, pa.ChunkedArray):
            list_array = list_array.combine_chunks()
        offsets = np.asarray(list_array.offsets, dtype=np.int64)
        values = np.asarray(list_array.values, dtype=np.int64)[offsets[0]:offsets[-1]]
        return cls(offsets - offsets[0], values)

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def counts(self) -> np.ndarray:
        """Tags per image."""
        return np.diff(self.offsets)

    def rows(self) -> np.ndarray:
        """The image index of every entry of ``values``."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> "TagSets":
        """The sub-collection of the given image rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, counts = self.offsets[rows], self.counts[rows]
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], counts)
        return TagSets(offsets, self.values[np.repeat(starts, counts) + within])

    def without(self, excluded: np.ndarray) -> "TagSets":
        """Drop the tags marked in the boolean ``excluded`` vocabulary mask (e.g. place names)."""
        keep = ~np.asarray(excluded, dtype=bool)[self.values]
        kept_per_row = np.bincount(self.rows()[keep], minlength=len(self))
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(kept_per_row, out=offsets[1:])
        return TagSets(offsets, self.values[keep])

    def images_per_tag(self, num_tags: int) -> np.ndarray:
        """How many images carry each tag (distinct tags per image assumed)."""
        return np.bincount(self.values, minlength=num_tags)

    def keys(self, num_tags: int) -> np.ndarray:
        """Sorted unique ``row * num_tags + tag`` keys: the set of (image, tag) pairs."""
        return np.unique(self.rows() * np.int64(num_tags) + self.values)

    def inverted(self, num_tags: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, rows): the images carrying tag t are ``rows[offsets[t]:offsets[t+1]]``."""
        order = np.argsort(self.values, kind="stable")
        offsets = np.zeros(num_tags + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.values, minlength=num_tags), out=offsets[1:])
        return offsets, self.rows()[order]


def contains(keys: np.ndarray, rows: np.ndarray, tags: np.ndarray, num_tags: int) -> np.ndarray:
    """Boolean array: does image ``rows[...]`` carry tag ``tags[...]`` (``keys``: :meth:`TagSets.keys`)."""
    rows, tags = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(tags, dtype=np.int64))
    out = np.zeros(rows.shape, dtype=bool)
    if keys.size == 0 or rows.size == 0:
        return out
    q_all = (rows * np.int64(num_tags) + tags).ravel()
    flat = out.ravel()
    for s in range(0, q_all.size, _KEY_CHUNK):
        q = q_all[s:s + _KEY_CHUNK]
        pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
        flat[s:s + _KEY_CHUNK] = keys[pos] == q
    return flat.reshape(rows.shape)


# --- tagging -----------------------------------------------------------------------------------------

def tagging_hits(topk: np.ndarray, truth: TagSets, num_tags: int) -> np.ndarray:
    """(n, k) booleans: is the j-th ranked tag of image i one of its ground-truth tags (-1, a slot a
    short ranking leaves empty, never is)."""
    topk = np.asarray(topk, dtype=np.int64)
    if topk.shape[0] != len(truth):
        raise ValueError(f"{topk.shape[0]} ranked rows for {len(truth)} images")
    rows = np.arange(topk.shape[0], dtype=np.int64)[:, None]
    return contains(truth.keys(num_tags), rows, np.maximum(topk, 0), num_tags) & (topk >= 0)


def accuracy_at_k(topk: np.ndarray, truth: TagSets, num_tags: int,
                  ks: Sequence[int] = (1, 10, 50)) -> dict[int, float]:
    """A@k: percentage of images with at least one ground-truth tag among their top k.

    ``topk`` holds each image's ranked tag indices, best first (at least max(ks) columns; fewer
    columns are allowed only if they cover every k asked). Images without ground truth (e.g. after
    removing place names) are left out of the mean.
    """
    if max(ks) > topk.shape[1]:
        raise ValueError(f"A@{max(ks)} needs {max(ks)} ranked tags per image, got {topk.shape[1]}")
    hits = tagging_hits(topk, truth, num_tags)
    valid = truth.counts > 0
    n = int(valid.sum())
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), topk.shape[1])
    return {k: (100.0 * float(np.sum((first < k) & valid)) / n if n else float("nan")) for k in ks}


def predicted_tag_coverage(top10: np.ndarray, truth: TagSets, num_tags: int) -> tuple[float, float]:
    """(%pred, %cpred): distinct tags in any top-10 (resp. among those ranked there correctly at
    least once), as a percentage of the distinct tags in the test ground truth."""
    top10 = np.asarray(top10, dtype=np.int64)
    in_test = np.unique(truth.values).size
    if in_test == 0:
        return float("nan"), float("nan")
    hits = tagging_hits(top10, truth, num_tags)
    pred = np.unique(top10).size
    cpred = np.unique(top10[hits]).size
    return 100.0 * pred / in_test, 100.0 * cpred / in_test


def filter_ranked(ranked: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` tags that are not ``excluded`` (boolean vocabulary mask), in order.

    For rankings that are explicit lists (frequency baselines). Raises if a row has fewer than k
    allowed tags; rank with the excluded tags masked instead when lists are short.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    allowed = ~np.asarray(excluded, dtype=bool)[ranked]
    if np.any(allowed.sum(axis=1) < k):
        raise ValueError(f"some ranked rows have fewer than {k} tags left after exclusion")
    order = np.argsort(~allowed, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ranked, order, axis=1)


def tagging_metrics(topk: np.ndarray, truth: TagSets, num_tags: int,
                    ks: Sequence[int] = TAGGING_KS, prefix: str = "tagging/",
                    suffix: str = "") -> dict[str, float]:
    """A@k for ``ks`` plus %pred / %cpred from the top 10, under :func:`tagging_metric_names`."""
    accuracy = accuracy_at_k(topk, truth, num_tags, ks)
    pred, cpred = predicted_tag_coverage(topk[:, :10], truth, num_tags)
    return dict(zip(tagging_metric_names(ks, prefix, suffix), [*(accuracy[k] for k in ks), pred, cpred]))


# --- location-agnostic retrieval -------------------------------------------------------------------

def retrieval_tags(truth: TagSets, num_tags: int, min_images: int = 10) -> np.ndarray:
    """Query tags for retrieval: tags carried by at least ``min_images`` test images."""
    return np.flatnonzero(truth.images_per_tag(num_tags) >= min_images)


def precision_at_k(retrieved: np.ndarray, query_tags: np.ndarray, truth: TagSets, num_tags: int,
                   k: int = 10) -> np.ndarray:
    """Per-query precision (percent) of ``retrieved[:, :k]`` (gallery rows) for ``query_tags``."""
    retrieved = np.asarray(retrieved, dtype=np.int64)[:, :k]
    if retrieved.shape[1] < k:
        raise ValueError(f"P@{k} needs {k} retrieved images per query, got {retrieved.shape[1]}")
    hits = contains(truth.keys(num_tags), retrieved, np.asarray(query_tags)[:, None], num_tags)
    return 100.0 * hits.mean(axis=1)


def p_at_10_agnostic(retrieved: np.ndarray, query_tags: np.ndarray, truth: TagSets,
                     num_tags: int) -> float:
    """Location-agnostic retrieval: mean over query tags of P@10 (percent)."""
    per_query = precision_at_k(retrieved, query_tags, truth, num_tags, 10)
    return float(per_query.mean()) if per_query.size else float("nan")


def p_at_10_chance(query_tags: np.ndarray, truth: TagSets, num_tags: int) -> float:
    """Expected P@10 (percent) of a ranking that ignores the images, which is what any frequency
    baseline does in retrieval: the share of gallery images carrying the tag, mean over tags."""
    query_tags = np.asarray(query_tags, dtype=np.int64)
    if query_tags.size == 0 or len(truth) == 0:
        return float("nan")
    return 100.0 * float((truth.images_per_tag(num_tags)[query_tags] / len(truth)).mean())


# --- distances -------------------------------------------------------------------------------------

def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance on the mean-radius sphere (vectorised; the fast pre-filter)."""
    p1, l1, p2, l2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def geodesic_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Geodesic distance on the WGS-84 ellipsoid (geographiclib; Karney's algorithm, which
    converges everywhere, unlike Vincenty). One geographiclib call per pair: use on few pairs."""
    inverse, mask = Geodesic.WGS84.Inverse, Geodesic.DISTANCE
    a = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (lat1, lon1, lat2, lon2)))
    flat = [x.ravel() for x in a]
    out = np.fromiter((inverse(p1, l1, p2, l2, mask)["s12"] for p1, l1, p2, l2 in zip(*flat)),
                      dtype=np.float64, count=flat[0].size)
    return (out / 1000.0).reshape(a[0].shape)


def within_km(lat1, lon1, lat2, lon2, thresholds_km: Sequence[float],
              mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Booleans (..., G): is the WGS-84 geodesic distance of each pair <= each threshold.

    Pairs outside ``mask`` (if given) are reported False without being measured.
    """
    arrays = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (lat1, lon1, lat2, lon2)))
    shape = arrays[0].shape
    flat = [x.ravel() for x in arrays]
    sel = np.ones(flat[0].size, dtype=bool) if mask is None else np.broadcast_to(mask, shape).ravel()
    thresholds = np.asarray(thresholds_km, dtype=np.float64)
    out = np.zeros((flat[0].size, thresholds.size), dtype=bool)
    idx = np.flatnonzero(sel)
    if idx.size == 0:
        return out.reshape(shape + (thresholds.size,))
    d = haversine_km(*(x[idx] for x in flat))[:, None]
    inside = d * (1 + SPHERE_TOLERANCE) <= thresholds
    unsure = ~inside & (d * (1 - SPHERE_TOLERANCE) <= thresholds)
    unsure_rows = np.flatnonzero(unsure.any(axis=1))
    if unsure_rows.size:
        exact = geodesic_km(*(x[idx[unsure_rows]] for x in flat))[:, None] <= thresholds
        inside[unsure_rows] = np.where(unsure[unsure_rows], exact, inside[unsure_rows])
    out[idx] = inside
    return out.reshape(shape + (thresholds.size,))


# --- location-sensitive retrieval ------------------------------------------------------------------

def location_queries(truth: TagSets, num_tags: int, seed: int, min_images: int = 10,
                     max_queries: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """One query per test image: (image row, one of its tags drawn with ``seed``); queries whose tag
    has fewer than ``min_images`` test images are skipped (docs/evaluation.md). The image's own location is the
    query location, and the image stays in the gallery.

    ``max_queries`` keeps a seeded subsample of that many. Every model evaluated on the same split
    with the same settings gets the same queries, so the rows of a table stay comparable.
    """
    counts = truth.counts
    has_tags = np.flatnonzero(counts > 0)
    rng = np.random.default_rng(seed)
    pick = truth.offsets[has_tags] + np.floor(rng.random(has_tags.size) * counts[has_tags]).astype(np.int64)
    tags = truth.values[pick]
    keep = truth.images_per_tag(num_tags)[tags] >= min_images
    rows, tags = has_tags[keep], tags[keep]
    if max_queries is not None and rows.size > max_queries:
        sub = np.sort(np.random.default_rng([seed, 1]).choice(rows.size, int(max_queries), replace=False))
        rows, tags = rows[sub], tags[sub]
    return rows, tags


def p_at_10_by_distance(retrieved: np.ndarray, query_tags: np.ndarray, query_lat: np.ndarray,
                        query_lon: np.ndarray, truth: TagSets, gallery_lat: np.ndarray,
                        gallery_lon: np.ndarray, num_tags: int,
                        granularities: Mapping[str, float] = GRANULARITIES_KM) -> dict[str, float]:
    """Location-sensitive P@10 (percent) per granularity, plus ``agnostic``.

    A retrieved gallery image is correct at granularity g if it carries the query tag and lies
    within g km (WGS-84 geodesic) of the query location. ``retrieved`` (Q, >=10) are gallery rows;
    location-agnostic models pass their per-tag top 10 for every query of that tag.
    """
    retrieved = np.asarray(retrieved, dtype=np.int64)[:, :10]
    if retrieved.shape[1] < 10:
        raise ValueError("P@10 needs 10 retrieved images per query")
    if retrieved.shape[0] == 0:
        return {name: float("nan") for name in [*granularities, "agnostic"]}
    tagged = contains(truth.keys(num_tags), retrieved, np.asarray(query_tags)[:, None], num_tags)
    near = within_km(np.asarray(query_lat)[:, None], np.asarray(query_lon)[:, None],
                     np.asarray(gallery_lat)[retrieved], np.asarray(gallery_lon)[retrieved],
                     list(granularities.values()), mask=tagged)
    out = {name: 100.0 * float((near[..., g].sum(axis=1) / 10.0).mean())
           for g, name in enumerate(granularities)}
    out["agnostic"] = 100.0 * float(tagged.mean(axis=1).mean())
    return out


def location_retrieval_metrics(retrieved: np.ndarray, query_rows: np.ndarray, query_tags: np.ndarray,
                               truth: TagSets, gallery_lat: np.ndarray, gallery_lon: np.ndarray, num_tags: int,
                               place_mask: Optional[np.ndarray] = None) -> dict[str, float]:
    """Location-sensitive retrieval under the project's metric names: P@10 per granularity over
    every query (``retrieval/P@10_<g>``) and, given the place-name mask, over the queries whose tag
    is not a place name (``retrieval/P@10_<g>_noplaces``), with the number of queries of each.

    The places-omitted view mirrors the tagging one (supplement, Table 2): for a place-name query
    the location *is* the tag, so those queries measure how well a model finds a place's photos,
    and the others how well it trades a concept against the place.
    """
    query_rows, query_tags = np.asarray(query_rows), np.asarray(query_tags)
    qlat, qlon = np.asarray(gallery_lat)[query_rows], np.asarray(gallery_lon)[query_rows]
    out = {location_metric_name(g): v for g, v in p_at_10_by_distance(
        retrieved, query_tags, qlat, qlon, truth, gallery_lat, gallery_lon, num_tags).items()}
    out[QUERIES] = float(query_tags.size)
    if place_mask is not None and np.any(place_mask):
        keep = ~np.asarray(place_mask, dtype=bool)[query_tags]
        out.update({location_metric_name(g, NOPLACES): v for g, v in p_at_10_by_distance(
            np.asarray(retrieved)[keep], query_tags[keep], qlat[keep], qlon[keep], truth, gallery_lat, gallery_lon,
            num_tags).items()})
        out[QUERIES + NOPLACES] = float(keep.sum())
    return out


def upper_bound_p_at_10_by_distance(query_tags: np.ndarray, query_lat: np.ndarray,
                                    query_lon: np.ndarray, truth: TagSets, gallery_lat: np.ndarray,
                                    gallery_lon: np.ndarray, num_tags: int,
                                    granularities: Mapping[str, float] = GRANULARITIES_KM,
                                    chunk_pairs: int = 1 << 22) -> dict[str, float]:
    """The best possible location-sensitive P@10: retrieving the 10 gallery images with the tag
    nearest the query. Per query and granularity that is min(10, #images with the tag within g)/10.

    Queries are grouped by tag and processed in chunks of about ``chunk_pairs`` query-image pairs;
    exact geodesics are computed only where the spherical distance cannot decide and the query
    does not already have 10 certain neighbours.
    """
    query_tags = np.asarray(query_tags, dtype=np.int64)
    qlat, qlon = np.asarray(query_lat, dtype=np.float64), np.asarray(query_lon, dtype=np.float64)
    glat, glon = np.asarray(gallery_lat, dtype=np.float64), np.asarray(gallery_lon, dtype=np.float64)
    names = list(granularities)
    thresholds = np.asarray([granularities[n] for n in names], dtype=np.float64)
    if query_tags.size == 0:
        return {name: float("nan") for name in [*names, "agnostic"]}
    inv_offsets, inv_rows = truth.inverted(num_tags)
    counts = np.zeros((query_tags.size, thresholds.size), dtype=np.int64)
    order = np.argsort(query_tags, kind="stable")
    bounds = np.flatnonzero(np.diff(query_tags[order])) + 1
    for group in np.split(order, bounds):
        t = query_tags[group[0]]
        rows = inv_rows[inv_offsets[t]:inv_offsets[t + 1]]
        step = max(1, chunk_pairs // max(1, rows.size))
        for s in range(0, group.size, step):
            q = group[s:s + step]
            d = haversine_km(qlat[q, None], qlon[q, None], glat[None, rows], glon[None, rows])
            for g, limit in enumerate(thresholds):
                sure = d * (1 + SPHERE_TOLERANCE) <= limit
                n_sure = sure.sum(axis=1)
                unsure = ~sure & (d * (1 - SPHERE_TOLERANCE) <= limit) & (n_sure < 10)[:, None]
                qi, gi = np.nonzero(unsure)
                if qi.size:
                    exact = geodesic_km(qlat[q[qi]], qlon[q[qi]], glat[rows[gi]], glon[rows[gi]]) <= limit
                    n_sure = n_sure + np.bincount(qi[exact], minlength=q.size)
                counts[q, g] = n_sure
    precision = np.minimum(counts, 10) / 10.0
    out = {name: 100.0 * float(precision[:, g].mean()) for g, name in enumerate(names)}
    have = truth.images_per_tag(num_tags)[query_tags]
    out["agnostic"] = 100.0 * float((np.minimum(have, 10) / 10.0).mean())
    return out


# --- metric names: the one place that names what evaluations log and the report reads -----------



def accuracy_metric_name(k: int, suffix: str = "", prefix: str = "tagging/") -> str:
    """Tagging accuracy at k (``tagging/A@10``, ``tagging/A@10_noplaces``)."""
    return f"{prefix}A@{k}{suffix}"


def tagging_metric_names(ks: Sequence[int] = TAGGING_KS, prefix: str = "tagging/", suffix: str = "") -> list[str]:
    """A@k for each k, then %pred and %cpred."""
    return [accuracy_metric_name(k, suffix, prefix) for k in ks] + [f"{prefix}pct_pred{suffix}",
                                                                     f"{prefix}pct_cpred{suffix}"]


def location_metric_name(granularity: str, suffix: str = "") -> str:
    """Location-sensitive P@10 at one granularity (``2500km`` ... ``1km``, or ``agnostic``)."""
    return f"retrieval/P@10_{granularity}{suffix}"


def retrieval_metric_names(granularities: Mapping[str, float] = GRANULARITIES_KM, suffix: str = "") -> list[str]:
    """The stable metric names of location-sensitive retrieval, finest granularity first."""
    return [location_metric_name(name, suffix) for name in [*granularities, "agnostic"]]


def evaluation_metric_names(ks: Sequence[int] = TAGGING_KS) -> list[str]:
    """Every metric an evaluation run logs that the report reads, with and without place names."""
    names = [n for s in ("", NOPLACES) for n in tagging_metric_names(ks, suffix=s)]
    names += [AGNOSTIC_P10] + [n for s in ("", NOPLACES) for n in retrieval_metric_names(suffix=s)]
    return names + [QUERIES, QUERIES + NOPLACES, "eval/images"]


#: One MLflow metric per suffix whose *steps* are the distance thresholds in km: MLflow's chart view
#: then draws every selected run's P@10 against distance as one line (the paper's granularity figure).
P10_BY_KM = "retrieval/P_at_10_by_km"


def p10_by_km_series(metrics: Mapping[str, float]) -> dict[str, list[tuple[int, float]]]:
    """``{P10_BY_KM[+suffix]: [(km, P@10), ...]}`` from an evaluation's metrics, finest first;
    the granularities it did not measure are left out."""
    out: dict[str, list[tuple[int, float]]] = {}
    for suffix in ("", NOPLACES):
        values = {int(km): metrics.get(location_metric_name(g, suffix)) for g, km in GRANULARITIES_KM.items()}
        points = sorted((km, float(v)) for km, v in values.items() if v is not None and v == v)
        if points:
            out[P10_BY_KM + suffix] = points
    return out


def mlflow_metric_name(name: str) -> str:
    """MLflow rejects ``@`` in metric names: ``tagging/A@10`` is logged as ``tagging/A_at_10``,
    ``retrieval/P@10_750km`` as ``retrieval/P_at_10_750km``. Use this for every MLflow metric."""
    return name.replace("@", "_at_")


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The same metrics under MLflow-safe names, NaNs dropped."""
    return {mlflow_metric_name(k): float(v) for k, v in metrics.items() if v == v}
