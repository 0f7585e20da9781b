"""The REST service under hostile input and load, as a real process: oversized chunked bodies,
decompression bombs, non-images, non-finite coordinates, out-of-range k, concurrent thumbnails,
a flood of tagging requests, and a real fault inside a request (a shard file cut short)."""
from __future__ import annotations

import asyncio
from http.client import HTTPConnection
import io
import json
import os
import shutil
import struct
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
from helpers import ROOT
from helpers.servers import free_port, http, serving
from PIL import Image

from serving.admission import Admission, Busy

pytestmark = pytest.mark.slow         # the fixture trains MCC and LocSens


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 0).save(buf, format=fmt)
    return buf.getvalue()


def chunked_post(base: str, path: str, total: int, piece: int = 16384) -> tuple[int, dict]:
    """POST ``total`` bytes with Transfer-Encoding: chunked (no Content-Length); the answer."""
    url = urlparse(base)
    conn = HTTPConnection(url.hostname, url.port, timeout=60)
    conn.putrequest("POST", path)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Content-Type", "image/jpeg")
    conn.endheaders()
    try:
        sent = 0
        while sent < total:
            conn.send(b"%x\r\n" % piece + b"\xff" * piece + b"\r\n")
            sent += piece
        conn.send(b"0\r\n\r\n")
    except OSError:            # the server answered and closed before the body ended: the point
        pass
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


def error(code_body: tuple[int, bytes]) -> tuple[int, str]:
    code, body = code_body
    return code, json.loads(body)["error"]


def test_hostile_requests_are_refused_with_one_line(service):
    base = service
    pid = json.loads(http(f"{base}/samples?n=1")[1])[0]["photo_id"]
    jpeg = http(f"{base}/photo/{pid}.jpg")[1]
    # A chunked body declares no length: it is counted as it arrives and cut at serve.max_bytes.
    status, body = chunked_post(base, "/tag?lat=1&lon=2", 1_000_000)
    assert status == 413 and "200,000 bytes" in body["error"], body
    cases = [
        ("/tag?lat=1&lon=2", png_header_only(20000, 20000), 413, "over the pixel limit"),    # Pillow's bomb
        ("/tag?lat=1&lon=2", png_header_only(3000, 3000), 413, "3,000 x 3,000 pixels, over the limit of 4,000,000"),
        ("/tag?lat=1&lon=2", image_bytes("GIF", (32, 32), "P"), 415, "a GIF image; send one of image/jpeg"),
        ("/tag?lat=1&lon=2", b"%PDF-1.4 not an image", 415, "not an image this can read"),
        ("/tag?lat=nan&lon=2", jpeg, 422, "latitude nan"),
        ("/tag?lat=1&lon=inf", jpeg, 422, "longitude inf"),
        ("/tag?lat=1&lon=2&k=0", jpeg, 422, "k=0: must be between 1 and 100"),
        ("/tag?lat=1&lon=2&k=-1", jpeg, 422, "k=-1: must be between 1 and 100"),
        ("/tag?lat=1&lon=2&k=1000000", jpeg, 422, "k=1000000: must be between 1 and 100"),
        ("/photos?tag=paris&lat=-inf&lon=2", None, 422, "latitude -inf"),
        ("/photos?tag=paris&lat=1&lon=2&k=-1", None, 422, "k=-1"),
        ("/photos?tag=paris&lat=1&lon=2&k=1000000", None, 422, "k=1000000"),
    ]
    for path, data, status, message in cases:
        code, text = error(http(f"{base}{path}", data, {"Content-Type": "image/jpeg"} if data else None))
        assert code == status and message in text and "\n" not in text, (path, code, text)
    # A PNG or WebP photo within the limits is tagged like a JPEG.
    png = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(png, format="PNG")
    code, body = http(f"{base}/tag?lat=48.85&lon=2.35&k=3", png.getvalue(), {"Content-Type": "image/png"})
    assert code == 200 and len(json.loads(body)["tags"]) == 3
    assert http(f"{base}/health")[0] == 200


def test_thumbnails_loaded_at_once_never_fail(service):
    """Twice as many row groups asked for at once as the cache holds (serve.photo_cache_groups=2)."""
    base = service
    samples = json.loads(http(f"{base}/samples?n=40")[1])
    expected = {s["photo_id"]: http(f"{base}/photo/{s['photo_id']}.jpg")[1] for s in samples}
    with ThreadPoolExecutor(24) as pool:
        got = list(pool.map(lambda p: (p, *http(f"{base}/photo/{p}.jpg")), list(expected) * 4))
    assert [code for _, code, _ in got if code != 200] == []
    assert all(body == expected[p] for p, _, body in got)


def test_a_flood_of_tagging_is_queued_or_refused_and_health_answers(service):
    """serve.workers=1, serve.queue=2: 24 requests at once run, wait, or answer 503; /health answers meanwhile."""
    base = service
    pid = json.loads(http(f"{base}/samples?n=1")[1])[0]["photo_id"]
    start = threading.Barrier(25)

    def tag(i: int) -> tuple[int, bytes]:
        start.wait()
        return http(f"{base}/tag?photo_id={pid}&lat={i % 80}&lon=2&k=5", b"")

    with ThreadPoolExecutor(24) as pool:
        answers = [pool.submit(tag, i) for i in range(24)]
        start.wait()
        health = http(f"{base}/health")
        results = [a.result() for a in answers]
    assert health[0] == 200 and json.loads(health[1])["status"] == "ok"
    assert {code for code, _ in results} <= {200, 503}
    assert sum(code == 200 for code, _ in results) >= 1
    for code, body in results:
        if code == 503:
            assert "serve.queue=2" in json.loads(body)["error"]


def test_admission_runs_waits_and_refuses():
    """The pool itself, deterministically: one worker, one place to wait, the third refused."""
    async def scenario():
        admission = Admission(workers=1, queue=1)
        release = threading.Event()
        first = asyncio.ensure_future(admission.run(release.wait, 30))
        second = asyncio.ensure_future(admission.run(lambda: "second"))
        await asyncio.sleep(0.05)
        assert admission.admitted == 2
        with pytest.raises(Busy, match="serve.workers=1, serve.queue=1"):
            await admission.run(lambda: "third")
        release.set()
        assert await first is True and await second == "second"
        assert admission.admitted == 0 and await admission.run(lambda: "again") == "again"
        admission.close()
    asyncio.run(scenario())
    with pytest.raises(ValueError, match="serve.workers must be >= 1"):
        Admission(workers=0, queue=1)


def test_an_internal_fault_answers_a_generic_500_with_a_request_id(trained, gallery, registered, tmp_path):
    """A shard file cut short under a running service: the thumbnail fails inside the request; the
    client gets no internals, the log gets the request id and the traceback."""
    shards = tmp_path / "shards"
    shutil.copytree(trained.shards, shards)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "serving.serve", *trained.settings(gallery), f"serve.port={port}",
                  f"serve.shards_dir={shards}", "serve.photo_cache_groups=1"], f"{base}/health", timeout=240,
                 cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}) as proc:
        pid = json.loads(http(f"{base}/samples?n=40")[1])[0]["photo_id"]    # its row group since evicted
        for f in (shards / "test").glob("*.parquet"):
            f.write_bytes(f.read_bytes()[:200])
        code, body = http(f"{base}/photo/{pid}.jpg")
        answer = json.loads(body)
        assert code == 500 and answer["error"].startswith("internal error (request ") and "Traceback" not in body.decode()
        assert "parquet" not in answer["error"].lower() and len(answer["request_id"]) == 12
        assert http(f"{base}/health")[0] == 200
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    assert f"request {answer['request_id']} (GET /photo/{pid}.jpg) failed" in log and "Traceback" in log
