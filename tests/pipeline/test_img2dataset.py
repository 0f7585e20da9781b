"""img2dataset end to end: jobs/image_urls.py's list, the real img2dataset package (its own
environment, make img2dataset-env) downloading from a loopback HTTP server that serves the
synthetic world's JPEGs with some 404s and a corrupt file, then shard_dataset reading its
Parquet output in place."""
from __future__ import annotations

import http.server
import re
import shlex
import subprocess
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT
from helpers.spark_jobs import job_config, output_path
from PIL import Image

from common.contract import read_manifest, shard_root
from pipeline import img2dataset, yfcc

pytestmark = [pytest.mark.spark, pytest.mark.slow]
I2D = ROOT / ".venv-img2dataset" / "bin" / "img2dataset"
SETTINGS = ["vocab.drop_top=0", "vocab.size=2000", "shard.image_size=32", "shard.rows_per_file=100",
            "shard.rows_per_row_group=20"]


class _Images(http.server.BaseHTTPRequestHandler):
    """GET /p/<photo_id>.jpg: the photo's JPEG, 404 for the dead ones, garbage for the corrupt."""

    files: dict[str, Path] = {}
    dead: set[str] = set()
    corrupt: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path in self.dead or self.path not in self.files or not self.files[self.path].exists():
            self.send_error(404)
            return
        body = b"\xff\xd8\xff\xe0 not really a jpeg" if self.path in self.corrupt else self.files[self.path].read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _to_loopback(urls_dir: Path, port: int) -> None:
    """Point the URL list at the loopback server, file by file and row by row as written."""
    for f in sorted(urls_dir.glob("*.parquet")):
        t = pq.read_table(f)
        ids = t["photo_id"].to_pylist()
        t = t.set_column(t.schema.get_field_index("url"), "url",
                         pa.array([f"http://127.0.0.1:{port}/p/{i}.jpg" for i in ids]))
        pq.write_table(t, f)


def test_img2dataset_download_then_shards(spark, tmp_path, synth_world, image_server):
    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata
    from jobs.image_urls import main as image_urls
    from jobs.shard_dataset import main as shard_dataset

    if not I2D.exists():
        pytest.fail(f"{I2D} is missing: make img2dataset-env (make test builds it)")
    cfg = job_config(tmp_path, synth_world, *SETTINGS)
    clean_metadata(cfg)
    build_vocab(cfg)
    image_urls(cfg)
    urls = output_path(cfg.outputs.image_urls)
    url_files = sorted(urls.glob("*.parquet"))
    dataset = pq.read_table(output_path(cfg.outputs.dataset), columns=["photo_id", "photo_hash", "split"]).to_pylist()
    assert sum(pq.read_metadata(f).num_rows for f in url_files) == len(dataset)
    assert len(url_files) == sum(1 for _ in expected_shard_files(dataset, 100))

    ids = sorted(r["photo_id"] for r in dataset)
    _Images.files = {f"/p/{r['photo_id']}.jpg": synth_world / "images" / yfcc.image_relpath(r["photo_hash"])
                     for r in dataset}
    _Images.dead = {f"/p/{i}.jpg" for i in ids[:5]}
    _Images.corrupt = {f"/p/{i}.jpg" for i in ids[5:7]}
    _to_loopback(urls, image_server.server_address[1])

    out = tmp_path / "i2d"
    cmd = shlex.split(img2dataset.command(str(urls), str(out), 32, processes=1, threads=8))
    proc = subprocess.run([str(I2D), *cmd[1:]], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    i2d_files = sorted(out.glob("*.parquet"))
    assert i2d_files

    shard_dataset(job_config(tmp_path, synth_world, *SETTINGS, "shard.image_source=img2dataset",
                             f"shard.img2dataset_dir={out}"))
    rejects = {r["photo_id"]: r["reason"] for r in pq.read_table(output_path(cfg.outputs.shard_rejects)).to_pylist()}
    world = {i: _own_reason(_Images.files[f"/p/{i}.jpg"]) for i in ids[7:]}   # the world's own bad images
    assert rejects == {**{i: "download_failed" for i in ids[:5]}, **{i: "undecodable_image" for i in ids[5:7]},
                       **{i: reason for i, reason in world.items() if reason}}
    assert set(world.values()) == {None, "download_failed", "undecodable_image"}
    m = read_manifest(cfg.shard.output)
    shard_of, stored = {}, {}
    for info in m.splits.values():
        for f in info.files:
            t = pq.read_table(shard_root(cfg.shard.output) / f.path, columns=["photo_id", "image"])
            shard_of.update({i: f.path for i in t["photo_id"].to_pylist()})
            stored.update(zip(t["photo_id"].to_pylist(), t["image"].to_pylist()))
            assert min(Image.open(pa.BufferReader(t["image"][0].as_py())).size) == 32
    assert len(shard_of) + len(rejects) == len(dataset)
    # img2dataset downloaded at the shard size: the shards hold its JPEGs byte for byte.
    downloaded = {}
    for f in i2d_files:
        t = pq.read_table(f, columns=["photo_id", "jpg"])
        downloaded.update(zip(t["photo_id"].to_pylist(), t["jpg"].to_pylist()))
    assert stored and all(stored[i] == downloaded[i] for i in stored)
    # Downloaded from image_urls' list, each img2dataset file holds the photos of one shard file,
    # and each shard task read one img2dataset file (as the tasks counted it themselves).
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=cfg.paths.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("pipeline/shard_dataset")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.data.metrics["img2dataset_files_per_shard"] == 1.0
    for f in i2d_files:
        got = {shard_of[i] for i in pq.read_table(f, columns=["photo_id"])["photo_id"].to_pylist() if i in shard_of}
        assert len(got) <= 1, (f.name, got)


def _own_reason(path: Path) -> str | None:
    """Why the world's image at ``path`` cannot be sharded (the synthetic world has a few)."""
    if not path.exists():
        return "download_failed"      # the server answers 404
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except OSError:
        return "undecodable_image"


def expected_shard_files(dataset: list[dict], rows_per_file: int):
    """The (split, file) pairs shard_dataset makes of ``dataset``: ceil(rows / rows_per_file) per split."""
    from pipeline.shards import files_per_split

    counts: dict[str, int] = {}
    for r in dataset:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    for split, n in files_per_split(counts, rows_per_file).items():
        yield from ((split, k) for k in range(n))


def test_img2dataset_locators_never_read_the_image_column(spark, tmp_path):
    """The narrow join reads no jpg bytes at all, so none can cross a shuffle."""
    rows = [{"key": f"{i:09d}", "url": f"http://h/{i}.jpg", "status": "success", "photo_id": i, "jpg": b"x" * 1000}
            for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    dataset = spark.createDataFrame([(i, f"http://h/{i}.jpg") for i in range(60)], "photo_id long, download_url string")
    located = img2dataset.locate(spark, dataset, str(tmp_path), "photo_id")
    plan = located._jdf.queryExecution().executedPlan().toString()
    schemas = re.findall(r"ReadSchema: (struct<[^>]*>)", plan)
    assert schemas and all("jpg" not in s for s in schemas), plan
    got = {r["photo_id"]: (r["i2d_row"], r["i2d_status"]) for r in located.collect()}
    assert got[7] == (7, "success") and got[55] == (None, None)
