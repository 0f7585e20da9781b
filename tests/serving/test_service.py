"""The REST service (``python -m serving.serve``) as a real process over the fixture's registered
models: tags, searches, photos, and bad requests refused with one line while it keeps serving."""
from __future__ import annotations

import json

import pytest
from helpers.servers import http

pytestmark = pytest.mark.slow         # the fixture trains MCC and LocSens


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
        (f"{base}/tag?lat=1&lon=2&k=101", jpeg, 422),
        (f"{base}/photos?tag=pariss&lat=48.85&lon=2.35", None, 404),
        (f"{base}/photos?tag=paris&lat=48.85&lon=200", None, 422),
        (f"{base}/photo/1.jpg", None, 404),
    ]:
        code, body = http(url, data, {"Content-Type": "image/jpeg"} if data else None)
        message = json.loads(body)["error"]
        assert code == status and "\n" not in message, (url, code, message)
    assert "close matches: paris" in json.loads(http(f"{base}/photos?tag=pariss&lat=1&lon=2")[1])["error"]
    assert http(f"{base}/health")[0] == 200                      # still serving
