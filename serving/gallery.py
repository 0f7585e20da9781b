"""An indexed gallery on disk: the photos search returns, with the indexes that shortlist them.

Layout of a gallery directory (built by ``python -m serving.search build``)::

    manifest.json      what is here and what made it (GalleryManifest), written last
    gallery.parquet    photo_id, latitude, longitude, tag_ids, embedding: one row per photo, in index order
    tags.parquet       the vocabulary: index, tag, embedding (MCC's tag embeddings)
    images.faiss       the FAISS index of the L2-normalised image embeddings (+ images.faiss.json)

The spatial index is rebuilt on load from the coordinates (seconds for millions of points),
so the directory holds nothing that could disagree with them. A gallery is written to a
``.partial`` sibling and renamed into place: a reader never sees half of one.
"""
from __future__ import annotations

import difflib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.embeddings import EmbeddingsManifest, arrow_to_embeddings, read_image_embeddings
from common.metrics import TagSets, contains, geodesic_km
from training.index.ann import AnnIndex, AnnSettings, normalised
from training.index.spatial import SpatialIndex

MANIFEST = "manifest.json"
GALLERY_FILE = "gallery.parquet"
TAGS_FILE = "tags.parquet"
COLUMNS = ["photo_id", "latitude", "longitude", "tag_ids", "embedding"]


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

    @classmethod
    def read(cls, directory: str | Path) -> "GalleryManifest":
        path = Path(directory) / MANIFEST
        if not path.exists():
            raise GalleryError(f"no search index at {Path(directory)} (no {MANIFEST}): build one with "
                               f"`python -m serving.search build gallery.dir={directory}`")
        return cls(**json.loads(path.read_text()))


def build_gallery(embeddings_dir: str | Path, out: str | Path, *, splits: Sequence[str] = ("test",),
                  settings: AnnSettings = AnnSettings(), models: Optional[dict[str, Optional[str]]] = None
                  ) -> GalleryManifest:
    """Index the photos of ``splits`` of an embeddings export into ``out`` (replacing what is there)."""
    started = time.perf_counter()
    emb = EmbeddingsManifest.read(embeddings_dir)
    missing = [s for s in splits if s not in emb.splits]
    if missing:
        raise GalleryError(f"{embeddings_dir}: split(s) {missing} not exported (has {sorted(emb.splits)})")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    table = pa.concat_tables([read_image_embeddings(embeddings_dir, s, columns=COLUMNS) for s in splits])
    if table.num_rows == 0:
        raise GalleryError(f"{embeddings_dir}: splits {list(splits)} hold no photos")
    pq.write_table(table, partial / GALLERY_FILE, row_group_size=65536)
    shutil.copyfile(Path(embeddings_dir) / emb.tags_path, partial / TAGS_FILE)
    AnnIndex.build(normalised(arrow_to_embeddings(table.column("embedding"))), settings).save(partial)
    manifest = GalleryManifest(
        embeddings_dir=str(Path(embeddings_dir).resolve()), embeddings_export_id=emb.export_id, splits=list(splits),
        rows=table.num_rows, num_tags=emb.num_tags, index=asdict(settings),
        models={k: (str(Path(v).resolve()) if v else None) for k, v in (models or {}).items()},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=time.perf_counter() - started)
    (partial / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return manifest


class Gallery:
    """A built gallery, loaded for search."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.manifest = GalleryManifest.read(self.dir)
        table = pq.read_table(self.dir / GALLERY_FILE)
        self.photo_id = table.column("photo_id").to_numpy()
        self.latitude = table.column("latitude").to_numpy()
        self.longitude = table.column("longitude").to_numpy()
        self.truth = TagSets.from_arrow(table.column("tag_ids"))
        self.embedding = np.array(arrow_to_embeddings(table.column("embedding")))   # writable: torch shares it
        tags = pq.read_table(self.dir / TAGS_FILE).sort_by("index")
        self.tag_names: list[str] = tags.column("tag").to_pylist()
        self.tag_vectors = np.array(arrow_to_embeddings(tags.column("embedding")))
        self._tag_of = {t: i for i, t in enumerate(self.tag_names)}
        self.ann = AnnIndex.load(self.dir)
        self.spatial = SpatialIndex(self.latitude, self.longitude)

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

    def row_of_photo(self, photo_id: int) -> int:
        rows = np.flatnonzero(self.photo_id == int(photo_id))
        if rows.size == 0:
            raise GalleryError(f"photo {photo_id} is not in the gallery ({len(self):,} photos of splits "
                               f"{self.manifest.splits})")
        return int(rows[0])

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
        Each photo: rank, photo_id, latitude, longitude, km (WGS-84), score, tagged (carries the tag)."""
        if shortlist is None:
            candidates = np.arange(len(self))
        else:
            _, by_tag = self.ann.search(normalised(self.tag_vectors[tag:tag + 1]), shortlist[0])
            by_place, _ = self.spatial.nearest(lat, lon, shortlist[1])
            candidates = np.unique(np.concatenate([by_tag[0][by_tag[0] >= 0], by_place[0]]))
        scores = np.concatenate([scorer(self.embedding[c], np.array([tag]), self.tag_vectors, lat, lon)
                                 for c in np.array_split(candidates, max(1, candidates.size // 65536))])
        order = np.argsort(-scores, kind="stable")[:k]
        rows = candidates[order]
        km = geodesic_km(lat, lon, self.latitude[rows], self.longitude[rows])
        v = len(self.tag_names)
        tagged = contains(self.truth.keys(v), rows, np.full(rows.size, tag), v)
        return [{"rank": i + 1, "photo_id": int(self.photo_id[r]), "latitude": float(self.latitude[r]),
                 "longitude": float(self.longitude[r]), "km": float(d), "score": float(scores[j]), "tagged": bool(h)}
                for i, (r, j, d, h) in enumerate(zip(rows, order, km, tagged))], int(candidates.size)
