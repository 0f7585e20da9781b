"""The shard task's own I/O against a real S3 API on loopback (moto's server): images read from an
``s3a://`` multimedia-commons tree and shard files, progress markers and rejects written to an
``s3a://`` folder through pyarrow, reached with the endpoint, path-style addressing and
credentials of the job's ``fs.s3a.*`` settings. The files are byte for byte those of the same
rows written on the local filesystem.

Spark's own s3a reads are not run here: pyspark ships without Hadoop's S3 connector, which
cannot be downloaded on these machines."""
from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers.images import jpeg
from moto.server import ThreadedMotoServer

from pipeline import images, shards

BUCKET = "yfcc"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def hadoop(endpoint: str) -> dict[str, str]:
    """The s3a settings a user gives the job (spark.hadoop.fs.s3a.*), as its Hadoop configuration has them."""
    return {"fs.s3a.endpoint": endpoint, "fs.s3a.path.style.access": "true", "fs.s3a.access.key": "tester",
            "fs.s3a.secret.key": "not-a-secret", "fs.s3a.endpoint.region": "us-east-1",
            "fs.s3a.connection.maximum": "64"}


def rows(paths: list[str]) -> list[dict]:
    return [{"photo_id": i, "user_nsid": "u", "latitude": 1.0, "longitude": 2.0, "tag_ids": [1, 2], "town": "t",
             "region": "r", "country": "c", "continent": "e", "split": "train", "shard": 0, "_order": i,
             "image_path": p} for i, p in enumerate(paths)]


def write(settings: shards.ShardSettings, batch: pa.RecordBatch) -> list[dict]:
    return [r for b in shards.shard_writer(settings)(iter([batch])) for r in b.to_pylist()]


def test_s3a_settings_map_to_pyarrow():
    options = images.s3_options(hadoop("http://127.0.0.1:9000"))
    assert dict(options) == {"endpoint": "http://127.0.0.1:9000", "path_style": "true", "access_key": "tester",
                             "secret_key": "not-a-secret", "region": "us-east-1"}   # only what pyarrow uses
    made = images.s3_filesystem(options).__reduce__()[1][0]       # the options pyarrow was given
    assert (made["endpoint_override"], made["scheme"], made["force_virtual_addressing"], made["region"]) == \
        ("127.0.0.1:9000", "http", False, "us-east-1")
    # A bare endpoint is https unless s3a's ssl is off; s3a addresses buckets as hosts unless told not to.
    for ssl, scheme in (("false", "http"), ("true", "https")):
        made = images.s3_filesystem(images.s3_options(
            {"fs.s3a.endpoint": "minio:9000", "fs.s3a.connection.ssl.enabled": ssl})).__reduce__()[1][0]
        assert (made["endpoint_override"], made["scheme"], made["force_virtual_addressing"]) == \
            ("minio:9000", scheme, True)
    assert shards.ShardSettings("s3a://b/o", "mmcommons", "s3a://b/i", 32, 90, 4, s3=options).fingerprint() == \
        shards.ShardSettings("s3a://b/o", "mmcommons", "s3a://b/i", 32, 90, 4).fingerprint()
    assert "not-a-secret" not in repr(shards.ShardSettings("s3a://b/o", "mmcommons", None, 32, 90, 4, s3=options))


def test_the_shard_task_reads_and_writes_s3_as_on_a_local_disk(s3_endpoint, tmp_path):
    options = images.s3_options(hadoop(s3_endpoint))
    fs = pafs.S3FileSystem(access_key="tester", secret_key="not-a-secret", region="us-east-1",
                           endpoint_override=s3_endpoint.split("://")[1], scheme="http", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    local_images = tmp_path / "images"
    paths = [f"a{i:02d}/b{i:02d}/photo{i}.jpg" for i in range(10)]
    for i, p in enumerate(paths[:-1]):           # the last one is missing
        data = jpeg(48 + i, 40, i)
        (local_images / p).parent.mkdir(parents=True, exist_ok=True)
        (local_images / p).write_bytes(data)
        with fs.open_output_stream(f"{BUCKET}/images/{p}") as out:
            out.write(data)
    batch = pa.RecordBatch.from_pylist(rows(paths))

    local = write(shards.ShardSettings(out_dir=f"file:{tmp_path / 'out'}", image_source="mmcommons",
                                       image_root=f"file:{local_images}", short_side=32, quality=90,
                                       rows_per_group=4), batch)
    remote = write(shards.ShardSettings(out_dir=f"s3a://{BUCKET}/work/shards", image_source="mmcommons",
                                        image_root=f"s3a://{BUCKET}/images", short_side=32, quality=90,
                                        rows_per_group=4, s3=options), batch)

    assert [(r["kind"], r["path"], r["reason"]) for r in remote if r["kind"] == "reject"] == \
        [("reject", paths[-1], "missing_image")]
    files = [r for r in remote if r["kind"] == "file"]
    assert [(r["path"], r["row_groups"]) for r in files] == \
        [(r["path"], r["row_groups"]) for r in local if r["kind"] == "file"]
    for f in files:
        with fs.open_input_stream(f"{BUCKET}/work/shards/{f['path']}") as fh:
            assert fh.readall() == (tmp_path / "out" / f["path"]).read_bytes()
        assert pq.read_table(f"{BUCKET}/work/shards/{f['path']}", filesystem=fs).num_rows == 9
    # The progress markers went to the bucket too: a rerun finds the file done and keeps it.
    again = write(shards.ShardSettings(out_dir=f"s3a://{BUCKET}/work/shards", image_source="mmcommons",
                                       image_root=f"s3a://{BUCKET}/images", short_side=32, quality=90,
                                       rows_per_group=4, images_in_flight=3, s3=options), batch)
    assert [r["resumed"] for r in again if r["kind"] == "file"] == [True]
    shutil.rmtree(tmp_path / "out")
