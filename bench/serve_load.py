"""Load on the REST service (``python -m serving.serve``): requests/s and p50/p99 latency of
``POST /tag`` and ``GET /photos`` at 1, 4 and 16 concurrent clients, and the failed requests.

Starts the service as its own process over the registered models of the tracking store (run
``make demo`` first: it registers them), waits for it, then for each endpoint and concurrency
runs the clients (threads, each a keep-alive-free urllib loop) for ``--seconds`` after a warm-up.
The ``/tag`` requests cycle over the sample photos, each sent as JPEG bytes at a place that
cycles too; ``/photos`` cycles over tags of the vocabulary and places. Meanwhile one more client
asks ``GET /health`` every 20 ms: its latency says whether the service stays responsive while
the models are busy. ``failed``: answers other than 200 (``503``: of those, refused as busy).

    python bench/serve_load.py [--clients 1 4 16] [--seconds 10] [--doc PAGE [--block NAME]]
        [key=value settings of conf/serving.yaml]
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
sys.path.insert(0, str(ROOT))

from common.markdown import table, write_block  # noqa: E402
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


def start_service(overrides: list[str], timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """``python -m serving.serve`` with ``overrides`` on a free port, once ``/health`` answers; the
    process and its base URL (exits with the service's output if it stops first)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "serving.serve", *overrides, f"serve.port={port}"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the service stopped: {proc.stdout.read()[-2000:]}")
        try:
            if call(f"{base}/health") == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"the service did not answer within {timeout:.0f} s")


def sample_jpegs(base: str, n: int = 20) -> list[bytes]:
    """JPEG bytes of ``n`` of the service's sample photos."""
    samples = json.loads(urllib.request.urlopen(f"{base}/samples?n={n}").read())
    return [urllib.request.urlopen(f"{base}/photo/{s['photo_id']}.jpg").read() for s in samples]


def quantiles(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms."""
    if not latencies:
        return float("nan"), float("nan")
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return 1000 * q[49], 1000 * q[98]


def load(make_request, clients: int, seconds: float, probe=None) -> dict[str, float]:
    """Run ``clients`` threads calling ``make_request(i)`` for ``seconds``; rate, latency, failures,
    and the latency of ``probe()`` (e.g. a /health request) called every 20 ms meanwhile."""
    latencies: list[float] = []
    probes: list[float] = []
    failures = [0, 0]
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
                failures[1] += status == 503
            i += clients

    def prober() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            probe()
            probes.append(time.perf_counter() - start)
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    if probe is not None:
        threads.append(threading.Thread(target=prober))
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    p50, p99 = quantiles(latencies)
    h50, h99 = quantiles(probes)
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": p50, "p99_ms": p99,
            "failed": failures[0], "busy": failures[1], "health_p50_ms": h50, "health_p99_ms": h99}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--doc", type=Path, help="also write the table into this Markdown page's block (--block)")
    ap.add_argument("--block", default="serve-load", choices=("serve-load", "serve-load-before"),
                    help="the block of --doc to write: serve-load, or serve-load-before for this bench run "
                         "on an earlier release's service (a checkout of it, with this file copied in)")
    ap.add_argument("overrides", nargs="*", help="key=value settings of the service (conf/serving.yaml)")
    args = ap.parse_args()
    proc, base = start_service(args.overrides)
    try:
        jpegs = sample_jpegs(base)

        def tag(i: int) -> int:
            lat, lon = PLACES[i % len(PLACES)]
            return call(f"{base}/tag?lat={lat}&lon={lon}&k=10", jpegs[i % len(jpegs)])

        def photos(i: int) -> int:
            lat, lon = PLACES[i % len(PLACES)]
            return call(f"{base}/photos?tag={TAGS[i % len(TAGS)]}&lat={lat}&lon={lon}&k=10")

        print(f"service: {json.loads(urllib.request.urlopen(f'{base}/health').read())}")
        rows = []
        for name, fn in (("POST /tag", tag), ("GET /photos", photos)):
            load(fn, 1, 1.0)                                        # warm-up
            for c in args.clients:
                r = load(fn, c, args.seconds, probe=lambda: call(f"{base}/health"))
                rows.append([name, str(c), str(r["requests"]), f"{r['rps']:.1f}", f"{r['p50_ms']:.1f}",
                             f"{r['p99_ms']:.1f}", f"{r['failed']} ({r['busy']})", f"{r['health_p50_ms']:.1f}",
                             f"{r['health_p99_ms']:.1f}"])
                print(" | ".join(rows[-1]), flush=True)
        text = (f"One service process and its clients on the same machine, {args.seconds:g} s per row after a "
                "warm-up; `/health` asked every 20 ms meanwhile:\n\n" +
                table(["endpoint", "clients", "requests", "req/s", "p50 ms", "p99 ms", "failed (503)",
                       "/health p50 ms", "/health p99 ms"], rows))
        print(text)
        if args.doc:
            command = f"python bench/serve_load.py --doc {args.doc} --block {args.block} {' '.join(args.overrides)}"
            write_block(args.doc, args.block, text, command.strip())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
