"""The on-disk gallery (serving.gallery) on an embeddings export written by the test helpers: built
in chunks, memory-mapped at load, photos read by row, and the compressed index's recall."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.embeddings import write_embeddings

import serving.gallery as gallery_module
from common.embeddings import arrow_to_embeddings, read_image_embeddings
from serving.gallery import Gallery, GalleryError, build_gallery
from training.index.ann import AnnIndex, AnnSettings, normalised


def cosine(images, tag_ids, table, lat, lon):
    """A plain scorer: the image-tag cosine, ignoring the place."""
    return (normalised(images) @ normalised(table[tag_ids]).T).ravel()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_embeddings(tmp_path_factory.mktemp("export"), rows=(("train", 50), ("val", 10), ("test", 2600)),
                            row_group=300)


def test_a_gallery_streamed_in_chunks_holds_the_export_row_for_row(export, tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_module, "CHUNK_ROWS", 256)       # many batches, across row groups and files
    manifest = build_gallery(export, tmp_path / "g", splits=("val", "test"), settings=AnnSettings(kind="flat"))
    g = Gallery(tmp_path / "g")
    table = pq.read_table(export / "images/val/part-r00000-of-00001.parquet")
    whole = [read_image_embeddings(export, s) for s in ("val", "test")]
    assert manifest.rows == len(g) == 2610 and manifest.dim == 32
    assert isinstance(g.embedding, np.memmap) and isinstance(g.photo_id, np.memmap)     # mapped, not loaded
    ids = np.concatenate([t.column("photo_id").to_numpy() for t in whole])
    assert np.array_equal(g.photo_id, ids)
    assert np.array_equal(g.embedding, np.concatenate([arrow_to_embeddings(t.column("embedding")) for t in whole]))
    tags = [row for t in whole for row in t.column("tag_ids").to_pylist()]
    assert all(g.tags_of(r).tolist() == tags[r] for r in range(len(g)))
    assert g.tags_of(3).tolist() == table.column("tag_ids")[3].as_py()
    for r in (0, 9, 10, 1234, 2609):
        assert g.row_of_photo(int(ids[r])) == r
    with pytest.raises(GalleryError, match="photo 1 is not in the gallery"):
        g.row_of_photo(1)
    assert set(manifest.files) >= {"embedding.npy", "images.faiss", "spatial.joblib", "tag_ids.npy"}


def test_photos_are_ranked_by_the_scorer_and_never_made_up(export, tmp_path):
    build_gallery(export, tmp_path / "g", settings=AnnSettings(kind="hnsw"))
    g = Gallery(tmp_path / "g")
    photos, scored = g.photos(cosine, 7, 48.85, 2.35, 10, shortlist=(20, 5))
    assert len(photos) == 10 and scored <= 25
    assert [p["score"] for p in photos] == sorted((p["score"] for p in photos), reverse=True)
    rows = [g.row_of_photo(p["photo_id"]) for p in photos]
    assert [p["tagged"] for p in photos] == [7 in g.tags_of(r) for r in rows]
    # More asked for than were shortlisted: the ones scored, each a real photo, none repeated.
    many, scored = g.photos(cosine, 7, 48.85, 2.35, 100, shortlist=(20, 5))
    assert len(many) == scored < 100 and len({p["photo_id"] for p in many}) == scored
    assert all(p["photo_id"] in set(g.photo_id.tolist()) for p in many)
    exact, scored = g.photos(cosine, 7, 48.85, 2.35, 10, shortlist=None)
    assert scored == len(g) and exact[0]["score"] >= photos[0]["score"]


def test_the_compressed_index_finds_what_exact_search_finds(export, tmp_path):
    settings = AnnSettings(kind="ivfpq", pq_bytes=8, pq_bits=4, nprobe=16)
    manifest = build_gallery(export, tmp_path / "g", settings=settings)
    g = Gallery(tmp_path / "g")
    assert manifest.index["kind"] == "ivfpq" and manifest.index["ivf_lists"] >= 1
    assert manifest.files["images.faiss"] < manifest.files["embedding.npy"] / 4          # compressed
    queries = normalised(g.tag_vectors)
    exact = AnnIndex.build(normalised(np.asarray(g.embedding)), AnnSettings(kind="flat")).search(queries, 10)[1]
    found = g.ann.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
    codes_only = AnnIndex(g.ann.index, g.ann.settings).search(queries, 10)[1]        # no re-scoring
    recall_codes = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, codes_only)])
    assert recall >= 0.9 and recall > recall_codes, (recall, recall_codes)


def test_auto_chooses_by_size_and_memory():
    assert AnnSettings().resolved(50_000, 300).kind == "flat"
    assert AnnSettings().resolved(1_000_000, 300).kind == "hnsw"
    big = AnnSettings().resolved(100_000_000, 300)
    assert big.kind == "ivfpq" and 100_000_000 * (big.pq_bytes + 8) <= 4 * 2 ** 30 and big.ivf_lists == 32768
    with pytest.raises(ValueError, match="do not fit an index of 0.1 GB"):
        AnnSettings(memory_gb=0.1).resolved(100_000_000, 300)
    with pytest.raises(ValueError, match="needs at least 9,984 images"):
        AnnSettings(kind="ivfpq").resolved(5000, 300)


def test_a_gallery_of_an_earlier_layout_says_rebuild(export, tmp_path):
    build_gallery(export, tmp_path / "g", settings=AnnSettings(kind="flat"))
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    (tmp_path / "g" / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(GalleryError, match="earlier layout.*rebuild it with `python -m serving.search build"):
        Gallery(tmp_path / "g")


def test_every_entry_point_bounds_k():
    """The registered models (pyfunc) and the command line refuse a k outside their bound, saying it."""
    from omegaconf import OmegaConf

    from serving.pyfunc import MAX_K, _k
    from serving.search import check_k

    assert _k(None) == 10 and _k({"k": MAX_K}) == MAX_K
    for k in (0, -1, 10 ** 6):
        with pytest.raises(ValueError, match=f"k={k}: must be between 1 and {MAX_K}"):
            _k({"k": k})
        with pytest.raises(ValueError, match=f"k={k}: ask for 1 to 100 answers"):
            check_k(k, OmegaConf.create({"search": {"max_k": 100}}))
