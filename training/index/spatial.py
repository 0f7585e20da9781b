"""Where the gallery's photos were taken, indexed for "the images nearest this place".

A ball tree on the sphere (scikit-learn's haversine metric): exact nearest neighbours in
O(log N) per query, built in seconds for millions of points, and no grid resolution to choose
(H3 or S2 cells would need one per granularity, from 1 km to 2,500 km). Distances it returns are
great-circle kilometres on the mean-radius sphere, the metric's own; evaluation decides its
thresholds on the WGS-84 geodesic (common.metrics), which is within 0.6% of these.

A saved tree (:meth:`SpatialIndex.save`) is memory-mapped at load: at 100M photos its arrays take
about 27 bytes a photo on disk, and a query pages in only the nodes it visits.
"""
from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from sklearn.neighbors import BallTree

from common.metrics import EARTH_RADIUS_KM


def check_coordinates(lat, lon) -> None:
    """Raise ValueError naming the first coordinate outside [-90, 90] x [-180, 180] (or not a number)."""
    lat, lon = np.atleast_1d(np.asarray(lat, dtype=np.float64)), np.atleast_1d(np.asarray(lon, dtype=np.float64))
    bad = ~(np.abs(lat) <= 90) | ~(np.abs(lon) <= 180)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"coordinates out of range: latitude {lat[i]:g} (must be in [-90, 90]), "
                         f"longitude {lon[i]:g} (must be in [-180, 180])")


class SpatialIndex:
    """Nearest gallery photos to query locations."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, leaf_size: int = 40):
        check_coordinates(lat, lon)
        self.size = int(np.asarray(lat).size)
        self.tree = BallTree(np.radians(np.c_[np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)]),
                             leaf_size=leaf_size, metric="haversine")

    def __len__(self) -> int:
        return self.size

    def save(self, path: str | Path) -> None:
        """The built tree, as arrays a later :meth:`load` maps instead of reading."""
        joblib.dump(self.tree, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "SpatialIndex":
        """A saved tree, memory-mapped read-only (nothing is rebuilt or copied)."""
        index = cls.__new__(cls)
        index.tree = joblib.load(str(path), mmap_mode="r")
        index.size = int(index.tree.data.shape[0])
        return index

    def nearest(self, lat, lon, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, km), each (Q, k): the k gallery photos nearest each query location, nearest first."""
        check_coordinates(lat, lon)
        q = np.radians(np.c_[np.atleast_1d(lat).astype(np.float64), np.atleast_1d(lon).astype(np.float64)])
        k = min(int(k), self.size)
        dist, ids = self.tree.query(q, k=k, sort_results=True)
        return ids.astype(np.int64), dist * EARTH_RADIUS_KM
