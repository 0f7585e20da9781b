"""Maximum-inner-product search over image embeddings with FAISS.

The vectors are L2-normalised image embeddings, so inner product is MCC's cosine. Kinds:

- ``flat``: exact brute force; the reference, and fine up to a few 100k images.
- ``hnsw``: a graph; no training, the best recall per query time, but it keeps every float and
  its links in memory (about 1.5 KB per 300-d image).
- ``ivf``: inverted lists over k-means cells with the float vectors; trained, faster to build.
- ``ivfpq``: OPQ rotation, inverted lists and product-quantised codes (``pq_bytes`` bytes an
  image, chosen under ``memory_gb``): the index for 100M images on one machine (the approach of
  autofaiss). Its best ``max(refine x k, refine_min)`` codes are re-scored exactly from the stored
  vectors when the caller gives them (a gallery's memory-mapped embeddings), which restores the recall
  the compression costs.
- ``auto``: flat up to :data:`FLAT_UP_TO` images; above, hnsw while its memory fits
  ``memory_gb``, ivfpq beyond.

An index is built from chunks (:meth:`AnnIndex.builder`): trained on a sample, then filled a chunk
at a time, so building never holds all the vectors. Saved indexes are memory-mapped at load where
FAISS can (the inverted lists of ivf and ivfpq): the operating system pages in what queries touch.
``search`` takes any query vectors of the same width: a tag's embedding (MCC retrieval) or the
factorised model's retrieval query.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
#: ``auto`` searches exactly (``flat``) up to this many images: brute force over 100k x 300 floats
#: costs a few ms a query and nothing to build.
FLAT_UP_TO = 100_000
#: Product-quantiser code sizes ``ivfpq`` chooses from (bytes an image), largest first.
PQ_BYTES = (64, 48, 32, 24, 16, 8)   # sub-quantisers; bytes an image at 8 bits
#: FAISS wants about this many training points per k-means cell.
POINTS_PER_CELL = 39
#: Rounds of OPQ's rotation training (bench/search_scale.py: 5 and 20 give the same recall after refine).
OPQ_ROUNDS = 10


@dataclass(frozen=True)
class AnnSettings:
    """How the index is built and searched (``evaluation.rerank.index`` and the search index)."""

    kind: str = "auto"
    hnsw_m: int = 32              # graph degree
    ef_construction: int = 80     # build-time beam
    ef_search: int = 256          # query-time beam (>= the candidates asked for)
    ivf_lists: Optional[int] = None   # k-means cells (None: 4 sqrt(N), a power of two for ivfpq)
    nprobe: int = 64              # cells visited per query
    seed: int = 0
    memory_gb: float = 4.0        # what the index may take in memory: auto's and ivfpq's choice
    pq_bytes: Optional[int] = None    # ivfpq sub-quantisers (None: the most that fit memory_gb)
    pq_bits: int = 8              # ivfpq bits a sub-quantiser's code (8: 256 codewords; fewer: small galleries)
    refine: int = 2               # ivfpq: re-score max(refine x k, refine_min) of its best codes exactly
    refine_min: int = 160         # ... from the stored vectors (bench/search_scale.py: recall@10 0.96 at 160)
    train_size: Optional[int] = None  # vectors sampled to train ivf / ivfpq (None: 39 per cell, >= 65,536)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        if self.pq_bytes is not None and self.pq_bytes not in PQ_BYTES:
            raise ValueError(f"index pq_bytes must be one of {PQ_BYTES}, got {self.pq_bytes}")
        if not 1 <= self.pq_bits <= 8:
            raise ValueError(f"index pq_bits must be in 1..8, got {self.pq_bits}")
        if self.memory_gb <= 0 or self.refine < 1 or self.refine_min < 0 or self.nprobe < 1:
            raise ValueError(f"index memory_gb must be > 0, refine and nprobe >= 1, refine_min >= 0, got {self}")

    def resolved(self, n: int, d: int) -> "AnnSettings":
        """The concrete kind (and ivfpq's cells and code size) for ``n`` vectors of width ``d``."""
        budget = self.memory_gb * 2 ** 30
        kind = self.kind
        if kind == "auto":
            kind = "flat" if n <= FLAT_UP_TO else "hnsw" if n * hnsw_bytes(d, self.hnsw_m) <= budget else "ivfpq"
        lists = self.ivf_lists or max(1, int(4 * math.sqrt(n)))
        if kind == "ivfpq" and self.ivf_lists is None:
            lists = 2 ** max(0, round(math.log2(lists)))
        lists = max(1, min(lists, n // POINTS_PER_CELL))
        pq = self.pq_bytes
        least = 2 ** self.pq_bits * POINTS_PER_CELL
        if kind == "ivfpq" and n < least:
            raise ValueError(f"an ivfpq index of {self.pq_bits}-bit codes needs at least {least:,} images to train, "
                             f"got {n:,} (use flat or hnsw, or fewer pq_bits)")
        if kind == "ivfpq" and pq is None:
            fits = [m for m in PQ_BYTES if m <= d and n * ivfpq_bytes(m * self.pq_bits / 8) <= budget]
            if not fits:
                raise ValueError(f"{n:,} images do not fit an index of {self.memory_gb:g} GB even at "
                                 f"{PQ_BYTES[-1]} bytes an image (raise memory_gb)")
            pq = fits[0]
        return replace(self, kind=kind, ivf_lists=lists if kind in ("ivf", "ivfpq") else self.ivf_lists, pq_bytes=pq)

    def sample_size(self, n: int) -> int:
        """How many vectors train the index (all of them for flat and hnsw, which need none)."""
        if self.kind not in ("ivf", "ivfpq"):
            return 0
        return min(n, self.train_size or max(POINTS_PER_CELL * (self.ivf_lists or 1), 65_536))


def hnsw_bytes(d: int, m: int) -> float:
    """Memory an image takes in an HNSW graph: its floats and about 2m links of 4 bytes (x1.1 upper levels)."""
    return 4 * d + 1.1 * 2 * m * 4


def ivfpq_bytes(code_bytes: float) -> float:
    """Memory an image takes in an IVF-PQ index: its code and its 8-byte id."""
    return code_bytes + 8


def _new_index(d: int, s: AnnSettings) -> faiss.Index:
    """An empty index of resolved settings ``s`` (ivf and ivfpq still to train)."""
    if s.kind == "flat":
        return faiss.IndexFlatIP(d)
    if s.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = s.ef_construction
        return index
    if s.kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, s.ivf_lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = s.seed
        return index
    m = s.pq_bytes
    rotated = min(4 * m, m * (d // m))               # OPQ's output width: a multiple of the sub-quantisers
    coarse = f"IVF{s.ivf_lists}_HNSW32" if s.ivf_lists >= 4096 else f"IVF{s.ivf_lists}"   # fast assignment at 100M
    index = faiss.index_factory(d, f"OPQ{m}_{rotated},{coarse},PQ{m}x{s.pq_bits}", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.seed = s.seed
    # OPQ's rotation converges in a few rounds on embeddings; FAISS's default 50 cost minutes for no recall.
    faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0)).niter = OPQ_ROUNDS
    return index


class AnnBuilder:
    """An index filled a chunk at a time: :meth:`train` on a sample (ivf, ivfpq), then :meth:`add`
    chunks in row order, then :meth:`done`."""

    def __init__(self, n: int, d: int, settings: AnnSettings):
        self.settings = settings.resolved(n, d)
        self.index = _new_index(d, self.settings)
        self.n = n

    @property
    def sample_size(self) -> int:
        return self.settings.sample_size(self.n)

    def train(self, sample: np.ndarray) -> None:
        if not self.index.is_trained:
            log.info("training a %s index on %d vectors", self.settings.kind, len(sample))
            self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def add(self, chunk: np.ndarray) -> None:
        if not self.index.is_trained:
            raise RuntimeError(f"a {self.settings.kind} index must be trained before vectors are added")
        self.index.add(np.ascontiguousarray(chunk, dtype=np.float32))

    def done(self, vectors: Optional[np.ndarray] = None) -> "AnnIndex":
        if self.index.ntotal != self.n:
            raise RuntimeError(f"index holds {self.index.ntotal:,} vectors, {self.n:,} expected")
        return AnnIndex(self.index, self.settings, vectors)


class AnnIndex:
    """A FAISS inner-product index over (N, d) float32 vectors; ids are row numbers.

    ``vectors``: the (N, d) vectors themselves (any array, a memory map included; normalised here
    row by row), which ivfpq re-scores its shortlist from; without them it ranks by its codes."""

    def __init__(self, index: faiss.Index, settings: AnnSettings, vectors: Optional[np.ndarray] = None):
        self.index, self.settings, self.vectors = index, settings, vectors

    @classmethod
    def builder(cls, n: int, d: int, settings: AnnSettings = AnnSettings()) -> AnnBuilder:
        return AnnBuilder(n, d, settings)

    @classmethod
    def build(cls, vectors: np.ndarray, settings: AnnSettings = AnnSettings()) -> "AnnIndex":
        """An index over ``vectors`` held in memory (evaluation's galleries); trained on an even sample."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        b = AnnBuilder(x.shape[0], x.shape[1], settings)
        if b.sample_size:
            b.train(x[even_sample(x.shape[0], b.sample_size)])
        b.add(x)
        return b.done(x)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k), best first; ids are -1 where fewer than k were found."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), len(self))
        if isinstance(self.index, faiss.IndexHNSW):
            self.index.hnsw.efSearch = max(self.settings.ef_search, k)
        elif self.settings.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(self.index).nprobe = self.settings.nprobe
        fetch = max(k * self.settings.refine, self.settings.refine_min)
        if self.settings.kind != "ivfpq" or self.vectors is None or fetch <= k:
            return self.index.search(q, k)
        _, ids = self.index.search(q, min(fetch, len(self)))
        return rescore(q, ids, self.vectors, k)

    def save(self, directory: str | Path, name: str = "images") -> None:
        directory = Path(directory)
        faiss.write_index(self.index, str(directory / f"{name}.faiss"))
        (directory / f"{name}.faiss.json").write_text(json.dumps(asdict(self.settings), indent=2))

    @classmethod
    def load(cls, directory: str | Path, name: str = "images", vectors: Optional[np.ndarray] = None,
             mmap: bool = True) -> "AnnIndex":
        """A saved index; ivf and ivfpq memory-mapped (``mmap``): their lists stay on disk until searched."""
        directory = Path(directory)
        settings = AnnSettings(**json.loads((directory / f"{name}.faiss.json").read_text()))
        flags = faiss.IO_FLAG_MMAP if mmap and settings.kind in ("ivf", "ivfpq") else 0
        return cls(faiss.read_index(str(directory / f"{name}.faiss"), flags), settings, vectors)


def rescore(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the ``k`` best of each query's candidate ``ids`` (-1: none) by exact inner
    product with the normalised ``vectors`` rows, read once for all queries (in row order: a memory
    map reads forward)."""
    valid = ids >= 0
    used, where = np.unique(ids[valid], return_inverse=True)
    keys = normalised(vectors[used]) if used.size else np.zeros((0, queries.shape[1]), dtype=np.float32)
    local = np.full(ids.shape, -1, dtype=np.int64)
    local[valid] = where
    scores = np.einsum("qd,qcd->qc", queries, keys[np.maximum(local, 0)]) if used.size else \
        np.zeros(ids.shape, dtype=np.float32)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, order, axis=1)
    out = np.where(np.isfinite(best), used[np.maximum(np.take_along_axis(local, order, axis=1), 0)]
                   if used.size else -1, -1)
    return best, out.astype(np.int64)


def even_sample(n: int, size: int) -> np.ndarray:
    """``size`` row numbers spread evenly over ``n`` (sorted: a memory map or a file reads forward)."""
    return np.unique(np.linspace(0, n - 1, min(size, n)).astype(np.int64))


def normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): inner product becomes cosine."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
