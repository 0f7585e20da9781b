"""common.metrics against brute-force references on small inputs."""
from __future__ import annotations

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic

from common import metrics as M

V = 40


def _random_truth(rng, n, v=V, max_tags=6, zipf=True):
    rows = []
    for _ in range(n):
        k = int(rng.integers(1, max_tags + 1))
        if zipf:
            p = 1.0 / np.arange(1, v + 1)
            rows.append(rng.choice(v, size=k, replace=False, p=p / p.sum()).tolist())
        else:
            rows.append(rng.choice(v, size=k, replace=False).tolist())
    return rows


def _ranked(rng, n, k, v=V):
    return np.stack([rng.permutation(v)[:k] for _ in range(n)])


def _points_near_thresholds(rng, n_queries, per_query):
    """Query points and gallery points, many of them within a hair of each granularity."""
    g = Geodesic.WGS84
    qlat = rng.uniform(-85, 85, n_queries)
    qlon = rng.uniform(-180, 180, n_queries)
    glat, glon = [], []
    limits = list(M.GRANULARITIES_KM.values())
    for i in range(n_queries):
        for j in range(per_query):
            limit = limits[j % len(limits)]
            dist = limit * (1 + rng.choice([-1, 1]) * rng.uniform(0.0001, 0.008))
            if j % 3 == 0:
                dist = rng.uniform(0, 3000)
            d = g.Direct(qlat[i], qlon[i], rng.uniform(0, 360), dist * 1000.0)
            glat.append(d["lat2"])
            glon.append(d["lon2"])
    return qlat, qlon, np.array(glat), np.array(glon)


def test_tagsets_roundtrip_take_without():
    rows = [[3, 1], [], [2, 2, 5], [0]]
    t = M.TagSets.from_lists(rows)
    assert len(t) == 4
    assert t.counts.tolist() == [2, 0, 2, 1]
    assert t.take(np.array([2, 0])).row(0).tolist() == [2, 5]
    assert t.take(np.array([2, 0])).row(1).tolist() == [1, 3]
    excluded = np.zeros(6, dtype=bool)
    excluded[[1, 5, 0]] = True
    w = t.without(excluded)
    assert [w.row(i).tolist() for i in range(4)] == [[3], [], [2], []]
    import pyarrow as pa

    arr = pa.array([[3, 1], [], [2, 5], [0]], type=pa.list_(pa.int32())).slice(1, 3)
    a = M.TagSets.from_arrow(arr)
    assert [a.row(i).tolist() for i in range(3)] == [[], [2, 5], [0]]
    off, rws = t.inverted(6)
    assert rws[off[2]:off[3]].tolist() == [2]
    assert sorted(rws[off[3]:off[4]].tolist()) == [0]


def test_accuracy_and_coverage_match_brute_force():
    rng = np.random.default_rng(1)
    rows = _random_truth(rng, 300)
    rows[5] = []  # an image without ground truth is left out of the mean
    truth = M.TagSets.from_lists(rows)
    topk = _ranked(rng, 300, 20)
    got = M.accuracy_at_k(topk, truth, V, ks=(1, 5, 20))
    for k in (1, 5, 20):
        valid = [i for i in range(300) if rows[i]]
        ref = 100.0 * np.mean([bool(set(topk[i, :k]) & set(rows[i])) for i in valid])
        assert got[k] == pytest.approx(ref)
    pred, cpred = M.predicted_tag_coverage(topk[:, :10], truth, V)
    in_test = {t for r in rows for t in r}
    ref_pred = {int(t) for t in topk[:, :10].ravel()}
    ref_cpred = {int(t) for i in range(300) for t in topk[i, :10] if t in rows[i]}
    assert pred == pytest.approx(100.0 * len(ref_pred) / len(in_test))
    assert cpred == pytest.approx(100.0 * len(ref_cpred) / len(in_test))
    named = M.tagging_metrics(topk, truth, V, ks=(1, 10), suffix="_noplaces")
    assert set(named) == {"tagging/A@1_noplaces", "tagging/A@10_noplaces",
                          "tagging/pct_pred_noplaces", "tagging/pct_cpred_noplaces"}
    with pytest.raises(ValueError):
        M.accuracy_at_k(topk[:, :5], truth, V, ks=(10,))


def test_filter_ranked_and_place_removal():
    rng = np.random.default_rng(2)
    ranked = _ranked(rng, 50, 30)
    excluded = np.zeros(V, dtype=bool)
    excluded[rng.choice(V, 8, replace=False)] = True
    got = M.filter_ranked(ranked, excluded, 10)
    ref = np.array([[t for t in r if not excluded[t]][:10] for r in ranked])
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError):
        M.filter_ranked(ranked[:, :5], excluded, 5 + 1)


def test_p_at_10_agnostic_matches_brute_force():
    rng = np.random.default_rng(3)
    rows = _random_truth(rng, 200)
    truth = M.TagSets.from_lists(rows)
    tags = M.retrieval_tags(truth, V, min_images=10)
    assert all(sum(t in r for r in rows) >= 10 for t in tags)
    assert all(sum(t in r for r in rows) < 10 for t in set(range(V)) - set(tags.tolist()))
    retrieved = np.stack([rng.choice(200, 10, replace=False) for _ in tags])
    got = M.p_at_10_agnostic(retrieved, tags, truth, V)
    ref = 100.0 * np.mean([np.mean([t in rows[i] for i in retrieved[q]]) for q, t in enumerate(tags)])
    assert got == pytest.approx(ref)
    # Chance: the mean of many random rankings.
    random_runs = [M.p_at_10_agnostic(np.stack([rng.choice(200, 10, replace=False) for _ in tags]), tags,
                                      truth, V) for _ in range(300)]
    assert M.p_at_10_chance(tags, truth, V) == pytest.approx(np.mean(random_runs), abs=0.5)
    assert M.p_at_10_chance(tags, truth, V) == pytest.approx(
        100.0 * np.mean([sum(t in r for r in rows) / 200 for t in tags]))


def test_within_km_matches_geodesic_everywhere():
    rng = np.random.default_rng(4)
    qlat, qlon, glat, glon = _points_near_thresholds(rng, 12, 15)
    qlat_r, qlon_r = np.repeat(qlat, 15), np.repeat(qlon, 15)
    limits = list(M.GRANULARITIES_KM.values())
    got = M.within_km(qlat_r, qlon_r, glat, glon, limits)
    exact = M.geodesic_km(qlat_r, qlon_r, glat, glon)
    np.testing.assert_array_equal(got, exact[:, None] <= np.array(limits))
    # poles, antimeridian, antipodes, identical points
    special = np.array([[90, 0, 89.99, 180], [0, 179.999, 0, -179.999], [0, 0, 0, 180], [10, 10, 10, 10],
                        [-90, 0, -89.9, 45]])
    got = M.within_km(*special.T, limits)
    exact = M.geodesic_km(*special.T)
    np.testing.assert_array_equal(got, exact[:, None] <= np.array(limits))
    g = Geodesic.WGS84.Inverse(0, 179.999, 0, -179.999)["s12"] / 1000
    assert M.geodesic_km(0, 179.999, 0, -179.999) == pytest.approx(g)


def _brute_p_at_10_by_distance(retrieved, qtags, qlat, qlon, rows, glat, glon):
    out = {name: [] for name in [*M.GRANULARITIES_KM, "agnostic"]}
    for q in range(len(qtags)):
        ok_tag = [qtags[q] in rows[i] for i in retrieved[q]]
        d = M.geodesic_km(np.full(10, qlat[q]), np.full(10, qlon[q]), glat[retrieved[q]], glon[retrieved[q]])
        for name, limit in M.GRANULARITIES_KM.items():
            out[name].append(np.mean([t and di <= limit for t, di in zip(ok_tag, d)]))
        out["agnostic"].append(np.mean(ok_tag))
    return {k: 100.0 * float(np.mean(v)) for k, v in out.items()}


def _brute_upper_bound(qtags, qlat, qlon, rows, glat, glon):
    out = {name: [] for name in [*M.GRANULARITIES_KM, "agnostic"]}
    for q, t in enumerate(qtags):
        with_tag = [i for i, r in enumerate(rows) if t in r]
        d = np.sort(M.geodesic_km(np.full(len(with_tag), qlat[q]), np.full(len(with_tag), qlon[q]),
                                  glat[with_tag], glon[with_tag]))[:10]
        for name, limit in M.GRANULARITIES_KM.items():
            out[name].append(np.sum(d <= limit) / 10.0)
        out["agnostic"].append(min(10, len(with_tag)) / 10.0)
    return {k: 100.0 * float(np.mean(v)) for k, v in out.items()}


def test_location_sensitive_retrieval_and_upper_bound_match_brute_force():
    rng = np.random.default_rng(5)
    n = 240
    # Gallery images clustered around a few centres, some right at the granularity thresholds.
    qlat0, qlon0, glat, glon = _points_near_thresholds(rng, 16, 15)
    glat, glon = glat[:n], glon[:n]
    rows = _random_truth(rng, n, v=12, max_tags=4)
    truth = M.TagSets.from_lists(rows)
    img, tags = M.location_queries(truth, 12, seed=11, min_images=10)
    img2, tags2 = M.location_queries(truth, 12, seed=11, min_images=10)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(tags, tags2)
    counts = truth.images_per_tag(12)
    assert np.all(counts[tags] >= 10)
    assert all(t in rows[i] for i, t in zip(img, tags))
    dropped = set(range(n)) - set(img.tolist())
    assert all(counts[t] < 10 for i in dropped for t in rows[i]) or dropped == set()
    # A location-agnostic model: one top 10 per tag, reused for every query of that tag.
    per_tag = {t: rng.choice(n, 10, replace=False) for t in range(12)}
    retrieved = np.stack([per_tag[t] for t in tags])
    qlat, qlon = glat[img], glon[img]
    got = M.p_at_10_by_distance(retrieved, tags, qlat, qlon, truth, glat, glon, 12)
    ref = _brute_p_at_10_by_distance(retrieved, tags, qlat, qlon, rows, glat, glon)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k]), k
    ub = M.upper_bound_p_at_10_by_distance(tags, qlat, qlon, truth, glat, glon, 12, chunk_pairs=500)
    ref_ub = _brute_upper_bound(tags, qlat, qlon, rows, glat, glon)
    for k in ref_ub:
        assert ub[k] == pytest.approx(ref_ub[k]), k
    assert ub["agnostic"] == pytest.approx(100.0)
    # The upper bound really is an upper bound.
    for k in ref:
        assert got[k] <= ub[k] + 1e-9
    assert M.retrieval_metric_names()[0] == "retrieval/P@10_1km"


def test_location_queries_subsample_is_the_same_for_every_model():
    rng = np.random.default_rng(0)
    truth = M.TagSets.from_lists([sorted(rng.choice(12, rng.integers(1, 4), replace=False).tolist())
                                  for _ in range(300)])
    rows, tags = M.location_queries(truth, 12, seed=3, min_images=10)
    sub_rows, sub_tags = M.location_queries(truth, 12, seed=3, min_images=10, max_queries=50)
    again = M.location_queries(truth, 12, seed=3, min_images=10, max_queries=50)
    assert sub_rows.size == 50 and np.array_equal(sub_rows, again[0]) and np.array_equal(sub_tags, again[1])
    full = dict(zip(rows.tolist(), tags.tolist()))
    assert all(full[r] == t for r, t in zip(sub_rows.tolist(), sub_tags.tolist()))   # a subset of the queries
    assert np.array_equal(M.location_queries(truth, 12, 3, 10, max_queries=10_000)[0], rows)


def test_location_retrieval_metrics_without_place_name_queries():
    truth = M.TagSets.from_lists([[0], [0], [1], [1], [0, 1]] * 4)
    lat, lon = np.zeros(20), np.linspace(0, 1, 20)
    rows, tags = np.array([0, 2, 4]), np.array([0, 1, 1])
    # Query 0 (a place name) retrieves only images without its tag.
    retrieved = np.stack([[2, 3, 7, 8, 12, 13, 17, 18, 2, 3], np.arange(10, 20), np.arange(10)])
    place = np.array([True, False])
    got = M.location_retrieval_metrics(retrieved, rows, tags, truth, lat, lon, 2, place_mask=place)
    whole = M.p_at_10_by_distance(retrieved, tags, lat[rows], lon[rows], truth, lat, lon, 2)
    only = M.p_at_10_by_distance(retrieved[1:], tags[1:], lat[rows[1:]], lon[rows[1:]], truth, lat, lon, 2)
    assert got["retrieval/P@10_agnostic"] == whole["agnostic"]
    assert got["retrieval/P@10_agnostic_noplaces"] == only["agnostic"] != whole["agnostic"]
    assert got["retrieval/queries_locations"] == 3 and got["retrieval/queries_locations_noplaces"] == 2
    assert "retrieval/P@10_agnostic_noplaces" not in M.location_retrieval_metrics(retrieved, rows, tags, truth,
                                                                                 lat, lon, 2)


def test_every_metric_an_evaluation_computes_is_named_in_one_place():
    """The report reads exactly the names in ``evaluation_metric_names``: whatever the metric
    functions compute for the tables (with and without place names) must be among them."""
    truth = M.TagSets.from_lists([[0], [0], [1], [1], [0, 1]] * 4)
    lat, lon = np.zeros(20), np.linspace(0, 1, 20)
    retrieved = np.stack([np.arange(10), np.arange(10, 20), np.arange(10)])
    located = M.location_retrieval_metrics(retrieved, np.array([0, 2, 4]), np.array([0, 1, 1]), truth, lat, lon, 2,
                                           place_mask=np.array([True, False]))
    topk = np.tile(np.arange(2), (20, 25))
    tagged = {**M.tagging_metrics(topk, truth, 2), **M.tagging_metrics(topk, truth, 2, suffix=M.NOPLACES)}
    names = set(M.evaluation_metric_names())
    assert set(located) <= names and set(tagged) <= names
    assert {M.AGNOSTIC_P10, M.QUERIES + M.NOPLACES, "tagging/A@50_noplaces"} <= names


def test_an_empty_slot_of_a_short_ranking_is_never_a_hit():
    """-1 pads a ranking with fewer candidates than k; it must not read as the previous image's
    last vocabulary tag (row * V - 1)."""
    truth = M.TagSets.from_lists([[4], [1]])            # image 0 carries tag 4 = V - 1
    ranked = np.array([[0, 1], [-1, -1]])
    assert M.tagging_hits(ranked, truth, 5).tolist() == [[False, False], [False, False]]
    assert M.accuracy_at_k(np.array([[4, -1], [1, -1]]), truth, 5, [1]) == {1: 100.0}
