"""An indexed gallery on disk: the photos search returns, with the indexes that shortlist them.

Layout of a gallery directory (built by ``python -m serving.search build``)::

    manifest.json      what is here and what made it (GalleryManifest), written last
    photo_id.npy       int64 (N,): row -> photo; rows are in the export's order
    latitude.npy       float64 (N,)     longitude.npy  float64 (N,)
    embedding.npy      float32 (N, d): the export's image embeddings (the location model scores
                       them; the index re-scores its shortlist from them)
    tag_offsets.npy    int64 (N + 1,)   tag_ids.npy  int32: row r's tags are
                       tag_ids[tag_offsets[r]:tag_offsets[r + 1]]
    id_order.npy       int64 (N,): rows sorted by photo_id (photo -> row by binary search)
    spatial.joblib     the ball tree over the coordinates (training.index.spatial)
    tags.parquet       the vocabulary: index, tag, embedding (MCC's tag embeddings)
    images.faiss       the FAISS index of the L2-normalised embeddings (+ images.faiss.json)

Everything per photo is a flat array that :class:`Gallery` memory-maps: a process holds only the
pages its queries touch, so 100M photos serve from one machine (bench/search_scale.py has the
figures). The build streams the export's Parquet a batch at a time into these arrays, then trains
the index on an even sample and fills it a chunk at a time: it never holds all the embeddings.
A gallery is written to a ``.partial`` sibling and renamed into place: a reader never sees half of one.
"""
from __future__ import annotations

import difflib
import json
import logging
import mmap
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
from numpy.lib.format import open_memmap

from common.embeddings import EmbeddingsManifest, arrow_to_embeddings
from common.metrics import geodesic_km
from training.index.ann import AnnIndex, AnnSettings, even_sample, normalised
from training.index.spatial import SpatialIndex, check_coordinates

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TAGS_FILE = "tags.parquet"
SPATIAL_FILE = "spatial.joblib"
COLUMNS = ["photo_id", "latitude", "longitude", "tag_ids", "embedding"]
#: The layout above; a gallery of another (an earlier release's single Parquet table) is rebuilt.
FORMAT = 2
#: Rows read, written and indexed at a time while building.
CHUNK_ROWS = 65_536


class GalleryError(Exception):
    """A gallery that is missing or cannot serve a request; the message says what to do."""


@dataclass
class GalleryManifest:
    embeddings_dir: str
    embeddings_export_id: str
    splits: list[str]
    rows: int
    num_tags: int
    index: dict[str, Any]
    #: LocSens (or factorised) checkpoints that score tagging and retrieval, and the image model
    #: (MCC) that embeds a new photo; paths as given at build time.
    models: dict[str, Optional[str]] = field(default_factory=dict)
    created: str = ""
    seconds: float = 0.0
    format: int = 1
    dim: int = 0
    #: Bytes of each file of the gallery, as written.
    files: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> "GalleryManifest":
        path = Path(directory) / MANIFEST
        if not path.exists():
            raise GalleryError(f"no search index at {Path(directory)} (no {MANIFEST}): build one with "
                               f"`python -m serving.search build gallery.dir={directory}`")
        manifest = cls(**json.loads(path.read_text()))
        if manifest.format != FORMAT:
            raise GalleryError(f"{Path(directory)}: a search index of an earlier layout (format {manifest.format}, "
                               f"this release reads {FORMAT}); rebuild it with `python -m serving.search build "
                               f"gallery.dir={directory}`")
        return manifest


def _export_files(embeddings_dir: str | Path, emb: EmbeddingsManifest, splits: Sequence[str]) -> list[tuple[Path, int]]:
    missing = [s for s in splits if s not in emb.splits]
    if missing:
        raise GalleryError(f"{embeddings_dir}: split(s) {missing} not exported (has {sorted(emb.splits)})")
    return [(Path(embeddings_dir) / f["path"], int(f["rows"])) for s in splits for f in emb.splits[s]["files"]]


def _write_rows(files: list[tuple[Path, int]], out: Path, n: int, d: int) -> int:
    """Stream the export's rows into the gallery's arrays; the number of tags written."""
    photo_id = open_memmap(out / "photo_id.npy", "w+", np.int64, (n,))
    lat = open_memmap(out / "latitude.npy", "w+", np.float64, (n,))
    lon = open_memmap(out / "longitude.npy", "w+", np.float64, (n,))
    emb = open_memmap(out / "embedding.npy", "w+", np.float32, (n, d))
    offsets = open_memmap(out / "tag_offsets.npy", "w+", np.int64, (n + 1,))
    offsets[0] = 0
    row, tags, last_log = 0, 0, time.monotonic()
    with open(out / "tag_ids.raw", "wb") as raw:
        for path, rows in files:
            file_rows = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=COLUMNS):
                b = batch.num_rows
                if row + b > n:
                    raise GalleryError(f"{path}: more rows than its export's manifest lists ({rows:,})")
                photo_id[row:row + b] = batch.column("photo_id").to_numpy()
                lat[row:row + b] = batch.column("latitude").to_numpy()
                lon[row:row + b] = batch.column("longitude").to_numpy()
                emb[row:row + b] = arrow_to_embeddings(batch.column("embedding"))
                lists = batch.column("tag_ids")
                rel = lists.offsets.to_numpy()
                values = lists.values.to_numpy(zero_copy_only=False)[rel[0]:rel[-1]].astype(np.int32)
                offsets[row + 1:row + b + 1] = tags + (rel[1:] - rel[0])
                raw.write(values.tobytes())
                tags += values.size
                row += b
                file_rows += b
                if time.monotonic() - last_log > 30:
                    log.info("gallery: %d of %d photos written", row, n)
                    last_log = time.monotonic()
            if file_rows != rows:
                raise GalleryError(f"{path}: {file_rows:,} rows, its export's manifest says {rows:,}")
    check_coordinates(lat, lon)
    for a in (photo_id, lat, lon, emb, offsets):
        a.flush()
    _raw_to_npy(out / "tag_ids.raw", out / "tag_ids.npy", np.int32, tags)
    np.save(out / "id_order.npy", np.argsort(photo_id, kind="stable"))
    return tags


def _raw_to_npy(raw: Path, npy: Path, dtype, count: int) -> None:
    """A raw array file (its length known only once written) as a .npy, copied a chunk at a time."""
    out = open_memmap(npy, "w+", dtype, (count,))
    src = np.memmap(raw, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
    for s in range(0, count, 1 << 24):
        out[s:s + (1 << 24)] = src[s:s + (1 << 24)]
    out.flush()
    del src
    raw.unlink()


def _build_index(out: Path, n: int, d: int, settings: AnnSettings) -> AnnSettings:
    emb = np.load(out / "embedding.npy", mmap_mode="r")
    builder = AnnIndex.builder(n, d, settings)
    if builder.sample_size:
        builder.train(normalised(emb[even_sample(n, builder.sample_size)]))
    last_log = time.monotonic()
    for s in range(0, n, CHUNK_ROWS):
        builder.add(normalised(emb[s:s + CHUNK_ROWS]))
        if time.monotonic() - last_log > 30:
            log.info("gallery: %d of %d photos indexed", min(s + CHUNK_ROWS, n), n)
            last_log = time.monotonic()
    index = builder.done()
    index.save(out)
    return index.settings


def build_gallery(embeddings_dir: str | Path, out: str | Path, *, splits: Sequence[str] = ("test",),
                  settings: AnnSettings = AnnSettings(), models: Optional[dict[str, Optional[str]]] = None
                  ) -> GalleryManifest:
    """Index the photos of ``splits`` of an embeddings export into ``out`` (replacing what is there)."""
    started = time.perf_counter()
    emb = EmbeddingsManifest.read(embeddings_dir)
    files = _export_files(embeddings_dir, emb, splits)
    n = sum(rows for _, rows in files)
    if n == 0:
        raise GalleryError(f"{embeddings_dir}: splits {list(splits)} hold no photos")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log.info("gallery: %d photos of %s from %s", n, list(splits), embeddings_dir)
    _write_rows(files, partial, n, emb.dim)
    shutil.copyfile(Path(embeddings_dir) / emb.tags_path, partial / TAGS_FILE)
    built = _build_index(partial, n, emb.dim, settings)
    SpatialIndex(np.load(partial / "latitude.npy"), np.load(partial / "longitude.npy")).save(partial / SPATIAL_FILE)
    manifest = GalleryManifest(
        embeddings_dir=str(Path(embeddings_dir).resolve()), embeddings_export_id=emb.export_id, splits=list(splits),
        rows=n, num_tags=emb.num_tags, index=asdict(built),
        models={k: (str(Path(v).resolve()) if v else None) for k, v in (models or {}).items()},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=time.perf_counter() - started,
        format=FORMAT, dim=emb.dim, files={f.name: f.stat().st_size for f in sorted(partial.iterdir())})
    (partial / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return manifest


class Gallery:
    """A built gallery, memory-mapped for search: opening one reads the manifest, the vocabulary
    and the index's small parts; photos are read by row as requests need them."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.manifest = GalleryManifest.read(self.dir)

        def array(name: str) -> np.ndarray:
            mapped = np.load(self.dir / f"{name}.npy", mmap_mode="r")
            # Rows are read a few at a time, all over the file: without this hint every row read
            # pulls in the kernel's readahead window (~100x the row), in memory and from disk.
            if mapped.size and hasattr(mmap, "MADV_RANDOM"):
                mapped._mmap.madvise(mmap.MADV_RANDOM)
            return mapped

        self.photo_id, self.latitude, self.longitude = array("photo_id"), array("latitude"), array("longitude")
        self.embedding = array("embedding")
        self.tag_offsets, self.tag_ids, self.id_order = array("tag_offsets"), array("tag_ids"), array("id_order")
        tags = pq.read_table(self.dir / TAGS_FILE).sort_by("index")
        self.tag_names: list[str] = tags.column("tag").to_pylist()
        self.tag_vectors = np.array(arrow_to_embeddings(tags.column("embedding")))
        self._tag_of = {t: i for i, t in enumerate(self.tag_names)}
        self.ann = AnnIndex.load(self.dir, vectors=self.embedding)
        self.spatial = SpatialIndex.load(self.dir / SPATIAL_FILE)

    def __len__(self) -> int:
        return int(self.photo_id.size)

    def tag_index(self, tag: str) -> int:
        """The vocabulary index of ``tag`` (case-insensitive), or a GalleryError with close matches."""
        key = tag.strip().lower()
        if key in self._tag_of:
            return self._tag_of[key]
        close = difflib.get_close_matches(key, self.tag_names, n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; no close match in the vocabulary"
        raise GalleryError(f"unknown tag {tag!r} (not among the {len(self.tag_names):,} tags of the vocabulary){hint}")

    def tags_of(self, row: int) -> np.ndarray:
        """The vocabulary indices of row ``row``'s tags."""
        return np.asarray(self.tag_ids[self.tag_offsets[row]:self.tag_offsets[row + 1]])

    def row_of_photo(self, photo_id: int) -> int:
        """The row of ``photo_id``: a binary search through ``id_order`` (log N rows read)."""
        i = int(np.searchsorted(self.photo_id, int(photo_id), sorter=self.id_order))
        if i == len(self) or int(self.photo_id[self.id_order[i]]) != int(photo_id):
            raise GalleryError(f"photo {photo_id} is not in the gallery ({len(self):,} photos of splits "
                               f"{self.manifest.splits})")
        return int(self.id_order[i])

    def model(self, role: str) -> str:
        """The checkpoint recorded for ``role`` (tagger, retriever, image_model); it must exist."""
        path = self.manifest.models.get(role)
        if not path:
            raise GalleryError(f"{self.dir}: no {role} model was given when this index was built "
                               f"(rebuild with --{role.replace('_', '-')} CHECKPOINT)")
        if not Path(path).is_file():
            raise GalleryError(f"{self.dir}: the {role} checkpoint {path} is gone; rebuild the index")
        return path

    def photos(self, scorer, tag: int, lat: float, lon: float, k: int,
               shortlist: Optional[tuple[int, int]] = (500, 200)) -> tuple[list[dict[str, Any]], int]:
        """The ``k`` best photos for vocabulary tag ``tag`` near (lat, lon) by ``scorer``
        (:class:`serving.scorers.Scorer`), and how many were scored: the ``shortlist``
        (photos near the tag in embedding space, photos near the place) or, with None, every photo.
        Each photo: rank, photo_id, latitude, longitude, km (WGS-84), score, tagged (carries the tag).
        Fewer than ``k`` when fewer were scored: never a made-up photo."""
        if shortlist is None:
            candidates = np.arange(len(self))
        else:
            _, by_tag = self.ann.search(normalised(self.tag_vectors[tag:tag + 1]), shortlist[0])
            by_place, _ = self.spatial.nearest(lat, lon, shortlist[1])
            candidates = np.unique(np.concatenate([by_tag[0][by_tag[0] >= 0], by_place[0]]))
        scores = np.concatenate([scorer(self.embedding[c], np.array([tag]), self.tag_vectors, lat, lon)
                                 for c in np.array_split(candidates, max(1, candidates.size // CHUNK_ROWS))])
        order = np.argsort(-scores, kind="stable")[:k]
        rows = candidates[order]
        km = geodesic_km(lat, lon, self.latitude[rows], self.longitude[rows])
        return [{"rank": i + 1, "photo_id": int(self.photo_id[r]), "latitude": float(self.latitude[r]),
                 "longitude": float(self.longitude[r]), "km": float(d), "score": float(scores[j]),
                 "tagged": bool(tag in self.tags_of(r))}
                for i, (r, j, d) in enumerate(zip(rows, order, km))], int(candidates.size)
