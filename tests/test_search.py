"""``python -m training.search`` end to end on a small fixture: real JPEG shards -> MCC (trained,
exported) -> LocSens (trained on the export) -> an indexed test gallery recorded in MLflow ->
tags for a JPEG at a place, photos for a tag near a place, and the errors a user meets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir
from servers import chromium, free_port, http, needs_browser, serving
from shard_fixture import make_shards

from common import metrics as M
from training.index.gallery import Gallery
from training.run import train
from training.search import main

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(root, shards, MCC export, LocSens checkpoint) trained for one epoch each."""
    root = tmp_path_factory.mktemp("search")
    shards = root / "shards"
    make_shards(shards, rows={"train": 64, "val": 24, "test": 40}, row_group_size=10, files_per_split=1)
    base = [f"paths.root_dir={root}", f"paths.shards_dir={shards}", f"paths.mlflow_tracking_uri=sqlite:///{root}/m.db",
            "data.num_workers=0", "data.persistent_workers=false", "trainer.num_sanity_val_steps=0",
            "callbacks.progress_bar.refresh_rate=0", "trainer.max_epochs=1", "evaluation.min_images=5"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        mcc = compose("train.yaml", overrides=["+experiment=mcc", *base, "model.backbone.name=resnet18",
                                               "model.backbone.pretrained=false", "data.batch_size=16", "data.crop=32",
                                               "data.prefetch_factor=null", "evaluation.chunk=16"])
    train(mcc)
    export = root / "outputs" / "mcc" / "embeddings"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        locsens = compose("train.yaml", overrides=[
            "+experiment=locsens_raw", *base, f"data.embeddings_dir={export}", "model.hidden=[64,32]",
            "model.groups=8", "data.batch_size=16"])
    train(locsens)
    return root, shards, export, root / "outputs" / "locsens_raw" / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def index(models):
    root, _, export, locsens = models
    out = root / "index"
    proc = subprocess.run(
        [sys.executable, "-m", "training.search", "build", "--embeddings", str(export), "--tagger", str(locsens),
         "--retriever", str(locsens), "--out", str(out), "--index-kind", "hnsw",
         "--tracking-uri", f"sqlite:///{root}/m.db", "--artifact-root", str(root / "art")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "indexed 40 photos" in proc.stdout
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_records_the_index_in_mlflow(models, index):
    root, *_ = models
    client = mlflow.MlflowClient(f"sqlite:///{root}/m.db")
    run = client.search_runs([client.get_experiment_by_name("search").experiment_id])[0]
    assert run.data.tags["gallery_dir"] == str(index.resolve())
    assert run.data.metrics["gallery/photos"] == 40
    gallery = Gallery(index)
    assert len(gallery) == 40 and run.data.tags["embeddings_export_id"] == gallery.manifest.embeddings_export_id


def test_tag_a_jpeg_at_two_places(models, index, capsys, tmp_path):
    _, shards, *_ = models
    table = pq.read_table(next((shards / "test").glob("*.parquet")), columns=["image", "photo_id"])
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(table.column("image")[0].as_py())
    results = []
    for lat, lon in ((48.85, 2.35), (-33.87, 151.21)):
        code, out, err = _run(capsys, "tag", "--image", str(photo), "--lat", str(lat), "--lon", str(lon),
                              "--k", "5", "--index", str(index), "--json")
        assert code == 0, err
        result = json.loads(out)
        scores = [t["score"] for t in result["tags"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        results.append(result)
    assert [t["score"] for t in results[0]["tags"]] != [t["score"] for t in results[1]["tags"]]   # the place matters
    # The stored embedding of a gallery photo, exact over the vocabulary, in plain text.
    pid = int(table.column("photo_id")[0].as_py())
    code, out, _ = _run(capsys, "tag", "--photo-id", str(pid), "--lat", "0", "--lon", "0", "--exact",
                        "--index", str(index))
    assert code == 0 and out.startswith(f"top tags for photo {pid}") and len(out.splitlines()) == 11


def test_photos_for_a_tag_near_a_place(index, capsys):
    gallery = Gallery(index)
    code, out, err = _run(capsys, "photos", "--tag", "paris", "--near", "48.85,2.35", "--k", "10",
                          "--index", str(index), "--json")
    assert code == 0, err
    result = json.loads(out)
    photos = result["photos"]
    assert len(photos) == 10 and len({p["photo_id"] for p in photos}) == 10
    assert [p["score"] for p in photos] == sorted((p["score"] for p in photos), reverse=True)
    rows = [gallery.row_of_photo(p["photo_id"]) for p in photos]
    km = M.geodesic_km(48.85, 2.35, gallery.latitude[rows], gallery.longitude[rows])
    assert np.allclose([p["km"] for p in photos], km)
    t = gallery.tag_index("paris")
    assert [p["tagged"] for p in photos] == [t in gallery.truth.row(r) for r in rows]
    # The whole gallery is shortlisted here (40 photos), so the shortlist ranks as --exact does.
    code, out, _ = _run(capsys, "photos", "--tag", "Paris", "--near", "48.85,2.35", "--exact", "--index", str(index),
                        "--json")
    assert [p["photo_id"] for p in json.loads(out)["photos"]] == [p["photo_id"] for p in photos]


@pytest.mark.parametrize("argv, message", [
    (["photos", "--tag", "pariss", "--near", "48.85,2.35"], "unknown tag 'pariss'.*close matches: paris"),
    (["photos", "--tag", "paris", "--near", "95,2"], "latitude 95"),
    (["photos", "--tag", "paris", "--near", "paris"], "expected LAT,LON"),
    (["tag", "--photo-id", "1", "--lat", "10", "--lon", "200"], "longitude 200"),
    (["tag", "--photo-id", "999999999", "--lat", "10", "--lon", "20"], "photo 999999999 is not in the gallery"),
])
def test_bad_requests_are_one_line_errors(index, capsys, argv, message):
    import re

    code, out, err = _run(capsys, *argv, "--index", str(index))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_missing_index_and_unreadable_image(index, capsys, tmp_path):
    code, _, err = _run(capsys, "photos", "--tag", "paris", "--near", "1,2", "--index", str(tmp_path / "none"))
    assert code == 2 and "no search index at" in err and "training.search build" in err
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not a jpeg at all")
    code, _, err = _run(capsys, "tag", "--image", str(bad), "--lat", "1", "--lon", "2", "--index", str(index))
    assert code == 2 and "notes.jpg: not an image" in err
    code, _, err = _run(capsys, "tag", "--image", str(tmp_path / "gone.jpg"), "--lat", "1", "--lon", "2",
                        "--index", str(index))
    assert code == 2 and "gone.jpg: cannot read" in err


def test_a_rebuild_replaces_the_index_whole(models, tmp_path, capsys):
    _, _, export, locsens = models
    out = tmp_path / "idx"
    for kind in ("flat", "ivf"):
        code, _, err = _run(capsys, "build", "--embeddings", str(export), "--tagger", str(locsens), "--retriever", "",
                            "--out", str(out), "--index-kind", kind, "--tracking-uri", "")
        assert code == 0, err
    assert Gallery(out).manifest.index["kind"] == "ivf"
    assert not out.with_name("idx.partial").exists()
    code, _, err = _run(capsys, "photos", "--tag", "paris", "--near", "1,2", "--index", str(out))
    assert code == 2 and "no retriever model was given" in err



# --- the training runs' MLflow Models -------------------------------------------------------------

def test_training_runs_log_loadable_models_and_their_datasets(models, index, capsys, tmp_path):
    import pandas as pd

    root, shards, export, _ = models
    client = mlflow.MlflowClient(f"sqlite:///{root}/m.db")
    runs = {r.data.tags["mlflow.runName"]: r for r in
            client.search_runs([client.get_experiment_by_name("train").experiment_id])}
    table = pq.read_table(next((shards / "test").glob("*.parquet")), columns=["image"])
    jpeg = table.column("image")[0].as_py()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg)
    mlflow.set_tracking_uri(f"sqlite:///{root}/m.db")
    for name, dataset in (("mcc", "shards"), ("locsens_raw", "mcc-embeddings")):
        run = client.get_run(next(r.info.run_id for n, r in runs.items() if n.startswith(name)))
        assert run.data.tags["model_uri"].startswith("models:/")         # MLflow 3's logged model
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == [dataset]
        model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
        assert {c.name for c in model.metadata.get_input_schema().inputs} >= {"image"}
        frame = pd.DataFrame({"image": [jpeg], "latitude": [48.85], "longitude": [2.35]})
        out = model.predict(frame if name != "mcc" else frame[["image"]], params={"k": 4})
        assert len(out) == 1 and len(out["tags"][0]) == 4 and list(out["scores"][0]) == sorted(out["scores"][0])[::-1]
        if name == "locsens_raw":   # the same answer as the search CLI with the same checkpoints
            code, text, _ = _run(capsys, "tag", "--image", str(photo), "--lat", "48.85", "--lon", "2.35", "--k", "4",
                                 "--index", str(index), "--json")
            assert [t["tag"] for t in json.loads(text)["tags"]] == list(out["tags"][0])
    # Lineage: LocSens read MCC's export (its run links to MCC's), MCC's evaluation scored MCC's model.
    mcc, locsens = (next(r for n, r in runs.items() if n.startswith(m)) for m in ("mcc", "locsens_raw"))
    assert locsens.data.tags["lineage.embeddings"] == mcc.info.run_id
    assert f"runs/{locsens.info.run_id})" in mcc.data.tags["mlflow.note.content"]
    assert client.get_run(mcc.data.tags["eval_run_id"]).data.tags["lineage.model"] == mcc.info.run_id
    with pytest.raises(Exception, match="base64"):
        model.predict(pd.DataFrame({"image": ["not base64!"], "latitude": [0.0], "longitude": [0.0]}))


def test_register_puts_the_best_of_each_model_in_the_registry_with_an_alias(models, index, capsys):
    import pandas as pd

    from training.register import main as register

    root, *_ = models
    uri = f"sqlite:///{root}/m.db"
    assert register(["--tracking-uri", uri]) == 0
    first = capsys.readouterr().out
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    names = {m.name for m in client.search_registered_models()}
    assert names == {"mcc", "locsens-tagging", "locsens-retrieval"}
    for name in names:
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert client.get_registered_model(name).description
    assert "registered locsens-retrieval version 1" in first
    assert register(["--tracking-uri", uri]) == 0                       # again: nothing new to register
    assert "registered" not in capsys.readouterr().out.replace("-> version", "")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/locsens-retrieval@champion")
    out = model.predict(pd.DataFrame({"tag": ["paris"], "latitude": [48.85], "longitude": [2.35]}), params={"k": 5})
    code, text, _ = _run(capsys, "photos", "--tag", "paris", "--near", "48.85,2.35", "--k", "5", "--index", str(index),
                         "--json")
    assert list(out["photo_ids"][0]) == [p["photo_id"] for p in json.loads(text)["photos"]]
    from training.report.build import registry_section

    section = registry_section(uri)                  # the report names the versions it shows
    assert "| locsens-tagging | 1 | version 1 | locsens_raw" in section and "models:/mcc@champion" in section


def test_the_report_says_when_nothing_is_registered(tmp_path):
    from training.report.build import registry_section

    assert registry_section(f"sqlite:///{tmp_path}/none.db").startswith("None yet")


def test_register_without_models_says_so(tmp_path, capsys):
    from training.register import main as register

    assert register(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) == 2
    assert "no run" in capsys.readouterr().err


# --- the REST service over the registered models ------------------------------------------------------

@pytest.fixture(scope="module")
def service(models, index):
    """``python -m training.serve`` over the fixture's registered models, as a real process."""
    from training.register import main as register

    root, shards, *_ = models
    uri = f"sqlite:///{root}/m.db"
    assert register(["--tracking-uri", uri]) == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "training.serve", "--tracking-uri", uri, "--shards", str(shards),
                  "--port", str(port), "--max-bytes", "200000"], f"{base}/health", timeout=240, cwd=ROOT,
                 env={**os.environ, "PYTHONPATH": str(ROOT)}):
        yield base


def test_the_service_tags_searches_and_refuses_bad_input(service):
    base = service
    samples = json.loads(http(f"{base}/samples?n=3")[1])
    assert len(samples) == 3
    pid = samples[0]["photo_id"]
    jpeg = http(f"{base}/photo/{pid}.jpg")[1]
    assert jpeg[:2] == b"\xff\xd8"
    paris = json.loads(http(f"{base}/tag?lat=48.85&lon=2.35&k=5", jpeg, {"Content-Type": "image/jpeg"})[1])
    sydney = json.loads(http(f"{base}/tag?photo_id={pid}&lat=-33.87&lon=151.21&k=5", b"")[1])
    assert "tags" in paris, paris
    assert len(paris["tags"]) == 5 and paris["tags"] != sydney["tags"]
    status, body = http(f"{base}/photos?tag=paris&lat=48.85&lon=2.35&k=4")
    found = json.loads(body)["photos"]
    assert status == 200 and len(found) == 4 and http(f"{base}{found[0]['thumbnail']}")[0] == 200
    for url, data, status in [
        (f"{base}/tag?lat=48.85&lon=2.35", b"not a jpeg", 415),
        (f"{base}/tag?lat=48.85&lon=2.35", b"\xff" * 300000, 413),
        (f"{base}/tag?lat=95&lon=2.35", jpeg, 422),
        (f"{base}/tag?lat=1&lon=2&k=0", jpeg, 422),
        (f"{base}/photos?tag=pariss&lat=48.85&lon=2.35", None, 404),
        (f"{base}/photos?tag=paris&lat=48.85&lon=200", None, 422),
        (f"{base}/photo/1.jpg", None, 404),
    ]:
        code, body = http(url, data, {"Content-Type": "image/jpeg"} if data else None)
        message = json.loads(body)["error"]
        assert code == status and "\n" not in message, (url, code, message)
    assert "close matches: paris" in json.loads(http(f"{base}/photos?tag=pariss&lat=1&lon=2")[1])["error"]
    assert http(f"{base}/health")[0] == 200                      # still serving


@needs_browser
def test_the_web_page_in_a_real_browser(service, tmp_path):
    """Headless Chromium: pick a sample photo, click two places (the tags differ), search a tag
    near a place (photos appear, as a grid and on the map); a screenshot under tmp_path."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(f"{service}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples img")) >= 3)
        driver.find_elements(By.CSS_SELECTOR, "#samples img")[0].click()
        canvas = driver.find_element(By.ID, "map")

        def click_place(lat: float, lon: float) -> None:
            w, h = canvas.rect["width"], canvas.rect["height"]
            ActionChains(driver).move_to_element_with_offset(
                canvas, int((lon + 180) / 360 * w - w / 2), int((90 - lat) / 180 * h - h / 2)).click().perform()

        def tags() -> list[str]:      # read in one script: the list is re-rendered as answers arrive
            return driver.execute_script("return [...document.querySelectorAll('#tags li')].map(l => l.textContent)")

        click_place(48.85, 2.35)
        wait.until(lambda d: len(tags()) == 10)
        paris = tags()
        assert "Place: 4" in driver.find_element(By.ID, "place").text
        click_place(-33.87, 151.21)
        wait.until(lambda d: len(tags()) == 10 and tags() != paris)
        click_place(48.85, 2.35)
        driver.find_element(By.ID, "tag-input").send_keys("paris")
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#photos img")) > 0)
        assert driver.find_element(By.ID, "status").text == ""
        assert driver.execute_script("return state.found.length") > 0            # the points drawn on the map
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10000
