"""Load on the REST service (``python -m training.serve``): requests/s and p50/p99 latency of
``POST /tag`` and ``GET /photos`` at 1, 4 and 16 concurrent clients, and the failed requests.

Starts the service as its own process over the registered models of the tracking store (run
``make demo`` first: it registers them), waits for it, then for each endpoint and concurrency
runs the clients (threads, each a keep-alive-free urllib loop) for ``--seconds`` after a warm-up.
The ``/tag`` requests cycle over the sample photos, each sent as JPEG bytes at a place that
cycles too; ``/photos`` cycles over tags of the vocabulary and places.

    python bench/serve_load.py [--clients 1 4 16] [--seconds 10] [--tracking-uri sqlite:///mlruns.db]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACES = [(41.39, 2.17), (48.85, 2.35), (-33.87, 151.21), (40.71, -74.0), (35.68, 139.69), (-22.9, -43.2)]
TAGS = ["beach", "sunset", "food", "city", "paris", "street", "water", "car"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "image/jpeg"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def load(make_request, clients: int, seconds: float) -> dict[str, float]:
    """Run ``clients`` threads calling ``make_request(i)`` for ``seconds``; rate, latency, failures."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        i = c
        while time.perf_counter() < stop:
            start = time.perf_counter()
            status = make_request(i)
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
                failures[0] += status != 200
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": 1000 * q[49],
            "p99_ms": 1000 * q[98], "failed": failures[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"))
    ap.add_argument("--shards", default="data/work/shards")
    args = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "training.serve", "--tracking-uri", args.tracking_uri,
                             "--shards", args.shards, "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                sys.exit(f"the service stopped: {proc.stdout.read()[-2000:]}")
            try:
                if call(f"{base}/health") == 200:
                    break
            except OSError:
                time.sleep(0.5)
        samples = json.loads(urllib.request.urlopen(f"{base}/samples?n=20").read())
        jpegs = [urllib.request.urlopen(f"{base}/photo/{s['photo_id']}.jpg").read() for s in samples]

        def tag(i: int) -> int:
            lat, lon = PLACES[i % len(PLACES)]
            return call(f"{base}/tag?lat={lat}&lon={lon}&k=10", jpegs[i % len(jpegs)])

        def photos(i: int) -> int:
            lat, lon = PLACES[i % len(PLACES)]
            return call(f"{base}/photos?tag={TAGS[i % len(TAGS)]}&lat={lat}&lon={lon}&k=10")

        print(f"service: {json.loads(urllib.request.urlopen(f'{base}/health').read())}")
        print(f"{'endpoint':<12}{'clients':>8}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
        for name, fn in (("POST /tag", tag), ("GET /photos", photos)):
            load(fn, 1, 1.0)                                        # warm-up
            for c in args.clients:
                r = load(fn, c, args.seconds)
                print(f"{name:<12}{c:>8}{r['requests']:>10}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                      f"{r['failed']:>8}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
