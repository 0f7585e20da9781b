"""Maximum-inner-product search over image embeddings with FAISS.

The vectors are L2-normalised image embeddings, so inner product is MCC's cosine. Three kinds:
``flat`` (exact, brute force: the reference, and fine up to a few 100k images), ``hnsw`` (a graph:
no training, the best recall per query time in memory), ``ivf`` (inverted lists over k-means
cells: trained, smaller and faster to build at 100M), and ``auto`` (flat up to
:data:`FLAT_UP_TO` images, hnsw above). ``search`` takes any query vectors of the
same width: a tag's embedding (MCC retrieval) or the factorised model's retrieval query.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

KINDS = ("auto", "flat", "hnsw", "ivf")
#: ``auto`` searches exactly (``flat``) up to this many images: brute force over 100k x 300 floats
#: costs a few ms a query and nothing to build; a graph (``hnsw``) above.
FLAT_UP_TO = 100_000


@dataclass(frozen=True)
class AnnSettings:
    """How the index is built and searched (``evaluation.rerank.index`` and the search index)."""

    kind: str = "auto"
    hnsw_m: int = 32              # graph degree
    ef_construction: int = 80     # build-time beam
    ef_search: int = 256          # query-time beam (>= the candidates asked for)
    ivf_lists: Optional[int] = None   # k-means cells (None: 4 sqrt(N))
    nprobe: int = 32              # cells visited per query
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")


class AnnIndex:
    """A FAISS inner-product index over (N, d) float32 vectors; ids are row numbers."""

    def __init__(self, index: faiss.Index, settings: AnnSettings):
        self.index, self.settings = index, settings

    @classmethod
    def build(cls, vectors: np.ndarray, settings: AnnSettings = AnnSettings()) -> "AnnIndex":
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        if settings.kind == "auto":
            settings = replace(settings, kind="flat" if n <= FLAT_UP_TO else "hnsw")
        if settings.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif settings.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = settings.ef_construction
        else:
            lists = settings.ivf_lists or max(1, int(4 * math.sqrt(n)))
            lists = min(lists, max(1, n // 39))   # FAISS wants ~39 training points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = settings.seed
            index.train(x)
        index.add(x)
        return cls(index, settings)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k), best first; ids are -1 where fewer than k were found."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), len(self))
        if isinstance(self.index, faiss.IndexHNSW):
            self.index.hnsw.efSearch = max(self.settings.ef_search, k)
        elif isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = self.settings.nprobe
        return self.index.search(q, k)

    def save(self, directory: str | Path, name: str = "images") -> None:
        directory = Path(directory)
        faiss.write_index(self.index, str(directory / f"{name}.faiss"))
        (directory / f"{name}.faiss.json").write_text(json.dumps(asdict(self.settings), indent=2))

    @classmethod
    def load(cls, directory: str | Path, name: str = "images") -> "AnnIndex":
        directory = Path(directory)
        settings = AnnSettings(**json.loads((directory / f"{name}.faiss.json").read_text()))
        return cls(faiss.read_index(str(directory / f"{name}.faiss")), settings)


def normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): inner product becomes cosine."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
