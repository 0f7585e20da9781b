"""The search indexes (FAISS image index, ball tree of photo locations) against brute force."""
from __future__ import annotations

import numpy as np
import pytest

from common import metrics as M
from training.index.ann import AnnIndex, AnnSettings, normalised
from training.index.spatial import SpatialIndex, check_coordinates


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_image_index_returns_the_brute_force_neighbours(kind, tmp_path):
    rng = np.random.default_rng(1)
    x = normalised(rng.normal(size=(400, 32)))
    q = normalised(rng.normal(size=(25, 32)))
    settings = AnnSettings(kind=kind, ef_search=400, ivf_lists=8, nprobe=8)   # small set: search it all
    index = AnnIndex.build(x, settings)
    index.save(tmp_path)
    scores, ids = AnnIndex.load(tmp_path).search(q, 10)
    brute = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert np.array_equal(ids, brute)
    assert np.allclose(scores, np.take_along_axis(q @ x.T, brute, 1), atol=1e-5)


def test_spatial_index_returns_the_nearest_photos():
    rng = np.random.default_rng(2)
    lat, lon = np.degrees(np.arcsin(rng.uniform(-1, 1, 600))), rng.uniform(-180, 180, 600)
    index = SpatialIndex(lat, lon)
    q_lat, q_lon = np.array([41.39, -33.9, 89.0, 0.0]), np.array([2.17, 151.2, -179.9, 180.0])
    ids, km = index.nearest(q_lat, q_lon, 7)
    for i in range(4):
        d = M.haversine_km(q_lat[i], q_lon[i], lat, lon)
        assert np.array_equal(ids[i], np.argsort(d)[:7])
        assert np.allclose(km[i], np.sort(d)[:7], rtol=1e-6)


def test_coordinates_out_of_range_are_named():
    with pytest.raises(ValueError, match="latitude 91"):
        check_coordinates([10, 91], [0, 0])
    with pytest.raises(ValueError, match="longitude -181"):
        check_coordinates([0], [-181])
    with pytest.raises(ValueError, match="latitude nan"):
        check_coordinates([float("nan")], [0])


