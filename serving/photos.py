"""The photos the service shows (sample photos, thumbnails): JPEG bytes by photo_id, read from a
split of the Parquet shards without loading it."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from common.contract import read_manifest, shard_root


class UnknownPhoto(LookupError):
    """A photo_id that is not in the split served."""


class PhotoStore:
    """JPEG bytes of a split's photos by photo_id, from the shards: an index of (file, row group,
    row) built from the photo_id column alone, and a few decoded row groups kept (LRU). Safe from
    many threads: the cache changes under a lock, and a reader keeps its own reference to the row
    group it reads, so an eviction by another thread cannot pull it away."""

    def __init__(self, shards_dir: str | Path, split: str = "test", cache_groups: int = 8):
        self.dir = shard_root(shards_dir)
        manifest = read_manifest(self.dir)
        ids, where = [], []
        for f, info in enumerate(manifest.splits[split].files):
            pf = pq.ParquetFile(self.dir / info.path)
            for g in range(pf.metadata.num_row_groups):
                col = pf.read_row_group(g, columns=["photo_id"]).column(0).to_numpy()
                ids.append(col)
                where.append(np.c_[np.full(col.size, f), np.full(col.size, g), np.arange(col.size)].astype(np.int32))
        self.files = [self.dir / info.path for info in manifest.splits[split].files]
        ids_all = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        order = np.argsort(ids_all)
        self.ids = ids_all[order]
        self.where = (np.concatenate(where) if where else np.zeros((0, 3), dtype=np.int32))[order]   # 20 bytes a photo with its id
        self.cache: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.cache_groups = cache_groups
        self.lock = threading.Lock()

    def _index(self, photo_id: int) -> int:
        """Where ``photo_id`` is in ``ids``, or -1."""
        i = int(np.searchsorted(self.ids, photo_id))
        return i if i < self.ids.size and self.ids[i] == photo_id else -1

    def __contains__(self, photo_id: int) -> bool:
        return self._index(photo_id) >= 0

    def _locate(self, photo_id: int) -> tuple[int, int, int]:
        i = self._index(photo_id)
        if i < 0:
            raise UnknownPhoto(f"photo {photo_id} is not among the {self.ids.size:,} photos served")
        f, g, r = (int(x) for x in self.where[i])
        return f, g, r

    def _group(self, f: int, g: int) -> Any:
        """Row group ``g`` of file ``f`` (image, latitude, longitude), from the cache or read (outside the lock)."""
        with self.lock:
            table = self.cache.get((f, g))
            if table is not None:
                self.cache.move_to_end((f, g))
                return table
        table = pq.ParquetFile(self.files[f]).read_row_group(g, columns=["image", "latitude", "longitude"])
        with self.lock:
            self.cache[(f, g)] = table
            while len(self.cache) > self.cache_groups:
                self.cache.popitem(last=False)
        return table

    def jpeg(self, photo_id: int) -> bytes:
        f, g, r = self._locate(photo_id)
        return self._group(f, g).column("image")[r].as_py()

    def samples(self, n: int) -> list[dict[str, Any]]:
        """``n`` photos spread over the split (every len/n-th by photo_id), with their places."""
        picks = self.ids[np.linspace(0, self.ids.size - 1, min(n, self.ids.size)).astype(int)] if self.ids.size else []
        out = []
        for pid in picks:
            f, g, r = self._locate(int(pid))
            t = self._group(f, g)
            out.append({"photo_id": int(pid), "latitude": float(t.column("latitude")[r].as_py()),
                        "longitude": float(t.column("longitude")[r].as_py())})
        return out
