"""``python -m serving.search`` end to end on the serving fixture (tests/serving/conftest.py): the
gallery recorded in MLflow, tags for a JPEG at a place, photos for a tag near a place, and the
errors a user meets."""
from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from common import metrics as M
from serving.gallery import Gallery
from serving.search import main

pytestmark = pytest.mark.slow         # the fixture trains MCC and LocSens


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_records_the_gallery_in_mlflow(trained, gallery):
    client = mlflow.MlflowClient(trained.uri)
    run = client.search_runs([client.get_experiment_by_name("search").experiment_id])[0]
    assert run.data.tags["gallery_dir"] == str(gallery.resolve())
    assert run.data.metrics["gallery/photos"] == 40
    assert run.data.tags["family"] == "locsens" and run.data.tags["best_checkpoint"] == str(trained.locsens.resolve())
    loaded = Gallery(gallery)
    assert len(loaded) == 40 and run.data.tags["embeddings_export_id"] == loaded.manifest.embeddings_export_id


def test_tag_a_jpeg_at_two_places(trained, gallery, capsys, tmp_path):
    table = pq.read_table(next((trained.shards / "test").glob("*.parquet")), columns=["image", "photo_id"])
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(table.column("image")[0].as_py())
    results = []
    for lat, lon in ((48.85, 2.35), (-33.87, 151.21)):
        code, out, err = _run(capsys, "tag", "--image", str(photo), "--lat", str(lat), "--lon", str(lon),
                              "--k", "5", f"gallery.dir={gallery}", "--json")
        assert code == 0, err
        result = json.loads(out)
        scores = [t["score"] for t in result["tags"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        results.append(result)
    assert [t["score"] for t in results[0]["tags"]] != [t["score"] for t in results[1]["tags"]]   # the place matters
    # The stored embedding of a gallery photo, exact over the vocabulary, in plain text.
    pid = int(table.column("photo_id")[0].as_py())
    code, out, _ = _run(capsys, "tag", "--photo-id", str(pid), "--lat", "0", "--lon", "0", "--exact",
                        f"gallery.dir={gallery}")
    assert code == 0 and out.startswith(f"top tags for photo {pid}") and len(out.splitlines()) == 11


def test_photos_for_a_tag_near_a_place(gallery, capsys):
    loaded = Gallery(gallery)
    code, out, err = _run(capsys, "photos", "--tag", "paris", "--near", "48.85,2.35", "--k", "10",
                          f"gallery.dir={gallery}", "--json")
    assert code == 0, err
    result = json.loads(out)
    photos = result["photos"]
    assert len(photos) == 10 and len({p["photo_id"] for p in photos}) == 10
    assert [p["score"] for p in photos] == sorted((p["score"] for p in photos), reverse=True)
    rows = [loaded.row_of_photo(p["photo_id"]) for p in photos]
    km = M.geodesic_km(48.85, 2.35, loaded.latitude[rows], loaded.longitude[rows])
    assert np.allclose([p["km"] for p in photos], km)
    t = loaded.tag_index("paris")
    assert [p["tagged"] for p in photos] == [t in loaded.tags_of(r) for r in rows]
    # The whole gallery is shortlisted here (40 photos), so the shortlist ranks as --exact does.
    code, out, _ = _run(capsys, "photos", "--tag", "Paris", "--near", "48.85,2.35", "--exact", f"gallery.dir={gallery}",
                        "--json")
    assert [p["photo_id"] for p in json.loads(out)["photos"]] == [p["photo_id"] for p in photos]


@pytest.mark.parametrize("argv, message", [
    (["photos", "--tag", "pariss", "--near", "48.85,2.35"], "unknown tag 'pariss'.*close matches: paris"),
    (["photos", "--tag", "paris", "--near", "95,2"], "latitude 95"),
    (["photos", "--tag", "paris", "--near", "paris"], "expected LAT,LON"),
    (["photos", "--tag", "paris", "--near", "1,2", "--k", "0"], "k=0: ask for 1 to 100 answers"),
    (["tag", "--photo-id", "1", "--lat", "10", "--lon", "200"], "longitude 200"),
    (["tag", "--photo-id", "999999999", "--lat", "10", "--lon", "20"], "photo 999999999 is not in the gallery"),
    (["tag", "--photo-id", "1", "--lat", "10", "--lon", "20", "search.nope=1"], "Could not override 'search.nope'"),
])
def test_bad_requests_are_one_line_errors(gallery, capsys, argv, message):
    code, out, err = _run(capsys, *argv, f"gallery.dir={gallery}")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_missing_gallery_and_unreadable_image(gallery, capsys, tmp_path):
    code, _, err = _run(capsys, "photos", "--tag", "paris", "--near", "1,2", f"gallery.dir={tmp_path / 'none'}")
    assert code == 2 and "no search index at" in err and "serving.search build gallery.dir=" in err
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not a jpeg at all")
    code, _, err = _run(capsys, "tag", "--image", str(bad), "--lat", "1", "--lon", "2", f"gallery.dir={gallery}")
    assert code == 2 and "notes.jpg: not an image" in err
    code, _, err = _run(capsys, "tag", "--image", str(tmp_path / "gone.jpg"), "--lat", "1", "--lon", "2",
                        f"gallery.dir={gallery}")
    assert code == 2 and "gone.jpg: cannot read" in err


def test_a_rebuild_replaces_the_gallery_whole(trained, tmp_path, capsys):
    out = tmp_path / "idx"
    for kind in ("flat", "ivf"):
        code, _, err = _run(capsys, "build", *trained.settings(out), f"gallery.embeddings_dir={trained.export}",
                            f"gallery.tagger={trained.locsens}", "gallery.retriever=null", f"gallery.index={kind}")
        assert code == 0, err
    assert Gallery(out).manifest.index["kind"] == "ivf"
    assert not out.with_name("idx.partial").exists()
    code, _, err = _run(capsys, "photos", "--tag", "paris", "--near", "1,2", f"gallery.dir={out}")
    assert code == 2 and "no retriever model was given" in err
    code, _, err = _run(capsys, "build", *trained.settings(out), f"gallery.tagger={tmp_path / 'none.ckpt'}")
    assert code == 2 and "gallery.tagger=" in err and "no such checkpoint" in err
