"""Search at size: a gallery of millions of synthetic photos built, searched and served, and the
projection to YFCC100M's 100M photos.

Needs ``make demo`` (its vocabulary, its MCC export, its retrieval model, and the registered
tagging model the service loads). Steps, each measured:

1. **A synthetic export** of ``--photos`` photos in the export's real format (Parquet files and
   manifest, as ``+experiment=mcc`` writes them): each photo is a point between two real demo
   photos' embeddings plus noise, at the first one's place (jittered) with its tags.
2. **The build**: ``python -m serving.search build gallery.index=ivfpq`` as its own process (wall
   time and peak RSS from the kernel's accounting of that child).
3. **Recall**: ``--queries`` tag embeddings searched in the compressed index (re-scored from the
   memory-mapped embeddings, as served; and from its codes alone) against exact search over all
   the embeddings; and the latency of one shortlist search (``search.images`` photos) and one
   nearby search (``search.nearby``).
4. **Serving**: ``python -m serving.serve serve.gallery=...`` (the gallery served directly), its RSS
   at start and its peak after the load, and ``/photos`` and ``/tag`` at 1, 4 and 16 clients
   (bench/serve_load.py's clients, with ``/health`` probed meanwhile).
5. **The projection** to 100M photos from the bytes per photo measured.

    python bench/search_scale.py [--photos 5000000] [--queries 200] [--seconds 10] [--doc docs/benchmarks.md]
        [key=value settings of conf/serving.yaml]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common.config import compose_config  # noqa: E402
from common.embeddings import (MANIFEST_NAME, TAGS_FILE, EmbeddingsManifest, arrow_to_embeddings,  # noqa: E402
                               embeddings_to_arrow, image_schema, read_image_embeddings)
from common.markdown import table, write_block  # noqa: E402
from serve_load import PLACES, call, load, sample_jpegs, start_service  # noqa: E402
from serving.gallery import Gallery  # noqa: E402
from training.index.ann import normalised  # noqa: E402

FILE_ROWS = 1_000_000
TARGET = 100_000_000
GB = 2 ** 30


def synthetic_export(source: Path, out: Path, photos: int, seed: int = 0) -> None:
    """``photos`` synthetic photos made from the real export at ``source`` (see the module doc)."""
    manifest = EmbeddingsManifest.read(source)
    base = [read_image_embeddings(source, s) for s in manifest.splits]
    emb = np.concatenate([arrow_to_embeddings(t.column("embedding")) for t in base])
    lat = np.concatenate([t.column("latitude").to_numpy() for t in base])
    lon = np.concatenate([t.column("longitude").to_numpy() for t in base])
    tags = pa.concat_arrays([t.column("tag_ids").combine_chunks() for t in base])
    spread = float(np.std(emb))
    rng = np.random.default_rng(seed)
    shutil.rmtree(out, ignore_errors=True)
    (out / "images" / "test").mkdir(parents=True)
    shutil.copyfile(source / manifest.tags_path, out / TAGS_FILE)
    files = []
    for f, start in enumerate(range(0, photos, FILE_ROWS)):
        n = min(FILE_ROWS, photos - start)
        rel = f"images/test/part-{f:05d}.parquet"
        with pq.ParquetWriter(out / rel, image_schema(manifest.dim)) as writer:
            for s in range(0, n, 131_072):
                c = min(131_072, n - s)
                a, b = rng.integers(0, emb.shape[0], c), rng.integers(0, emb.shape[0], c)
                mix = rng.uniform(0, 0.5, (c, 1)).astype(np.float32)
                vec = (1 - mix) * emb[a] + mix * emb[b] + rng.normal(0, 0.1 * spread, (c, manifest.dim)).astype(np.float32)
                writer.write_table(pa.Table.from_arrays([
                    pa.array(np.arange(start + s, start + s + c, dtype=np.int64) + 1), pa.array(["test"] * c),
                    embeddings_to_arrow(vec.astype(np.float32), manifest.dim),
                    pa.array(np.clip(lat[a] + rng.normal(0, 0.05, c), -90, 90)),
                    pa.array((lon[a] + rng.normal(0, 0.05, c) + 180) % 360 - 180),
                    tags.take(pa.array(a))], schema=image_schema(manifest.dim)))
        files.append({"path": rel, "rows": n})
        print(f"  export: {start + n:,} of {photos:,} photos", flush=True)
    out_manifest = EmbeddingsManifest(model=manifest.model, score=manifest.score, dim=manifest.dim,
                                      num_tags=manifest.num_tags, splits={"test": {"files": files, "rows": photos}},
                                      extra=manifest.extra, export_id=f"synthetic-{photos}", family=manifest.family,
                                      max_tags=manifest.max_tags)
    (out / MANIFEST_NAME).write_text(out_manifest.to_json())


def run_measured(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of a child process, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{argv[:4]} failed with status {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024 / GB


def exact_top10(gallery: Gallery, queries: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """Exact top 10 by cosine over all of the gallery's embeddings, a chunk at a time."""
    best_s = np.full((queries.shape[0], 10), -np.inf, dtype=np.float32)
    best_i = np.full((queries.shape[0], 10), -1, dtype=np.int64)
    for s in range(0, len(gallery), chunk):
        scores = queries @ normalised(gallery.embedding[s:s + chunk]).T
        top = np.argpartition(-scores, min(10, scores.shape[1] - 1), axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, top + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, order, axis=1), np.take_along_axis(cand_i, order, axis=1)
    return best_i


def recall(exact: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b[b >= 0])) / 10 for a, b in zip(exact, found[:, :10])]))


def latency(fn, n: int) -> tuple[float, float]:
    took = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        took.append(time.perf_counter() - t)
    return 1000 * float(np.percentile(took, 50)), 1000 * float(np.percentile(took, 99))


def rss_gb(pid: int) -> dict[str, float]:
    """A running process's resident memory, GB: VmRSS (now), VmHWM (peak), and now split into
    RssAnon (its own) and RssFile (pages of mapped files: page cache the kernel can drop)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 / GB for line in status
              if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile"))}
    return fields


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=5_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "search_scale")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic export and gallery (GBs)")
    ap.add_argument("--doc", type=Path, help="also write the tables into this Markdown page's block search-scale")
    ap.add_argument("overrides", nargs="*", help="key=value settings of conf/serving.yaml (the demo's by default)")
    args = ap.parse_args()
    cfg = compose_config("serving", args.overrides)
    source, retriever = Path(cfg.gallery.embeddings_dir), cfg.gallery.retriever
    if not (source / MANIFEST_NAME).exists() or not retriever or not Path(retriever).is_file():
        sys.exit(f"needs the demo's MCC export ({source}) and retrieval model ({retriever}): run `make demo` first")
    export, gallery_dir = args.out / "export", args.out / "gallery"
    args.out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    synthetic_export(source, export, args.photos)
    export_s = time.perf_counter() - t
    print(f"export of {args.photos:,} photos: {export_s:.0f} s", flush=True)
    build_s, build_gb = run_measured([
        sys.executable, "-m", "serving.search", "build", *args.overrides, f"gallery.dir={gallery_dir}",
        f"gallery.embeddings_dir={export}", "gallery.index=ivfpq", "gallery.tagger=null",
        f"paths.mlflow_tracking_uri=sqlite:///{args.out}/mlruns.db", f"paths.mlflow_artifact_root={args.out}/mlartifacts"])
    g = Gallery(gallery_dir)
    files = g.manifest.files
    index = g.manifest.index
    print(f"build: {build_s:.0f} s, peak RSS {build_gb:.2f} GB, index {index}", flush=True)

    rng = np.random.default_rng(1)
    tags = rng.choice(len(g.tag_names), args.queries, replace=False)
    queries = normalised(g.tag_vectors[tags])
    t = time.perf_counter()
    exact = exact_top10(g, queries)
    exact_s = time.perf_counter() - t
    served = recall(exact, g.ann.search(queries, 10)[1])
    codes = recall(exact, type(g.ann)(g.ann.index, g.ann.settings).search(queries, 10)[1])
    shortlist_ms = latency(lambda i: g.ann.search(queries[i % len(queries)][None], int(cfg.search.images)), 200)
    nearby_ms = latency(lambda i: g.spatial.nearest(*PLACES[i % len(PLACES)], int(cfg.search.nearby)), 200)
    top10_ms = latency(lambda i: g.ann.search(queries[i % len(queries)][None], 10), 200)
    print(f"recall@10 {served:.3f} (codes alone {codes:.3f}); exact search {exact_s:.0f} s", flush=True)

    proc, base = start_service([*args.overrides, f"serve.gallery={gallery_dir}", "serve.queue=64"])
    try:
        start_rss = rss_gb(proc.pid)
        jpegs = sample_jpegs(base)
        vocab = pq.read_table(gallery_dir / "tags.parquet", columns=["tag"]).column("tag").to_pylist()
        query_tags = [vocab[int(i)] for i in tags]

        def photos(i: int) -> int:
            lat, lon = PLACES[i % len(PLACES)]
            return call(f"{base}/photos?tag={quote(query_tags[i % len(query_tags)])}&lat={lat}&lon={lon}&k=10")

        def tag(i: int) -> int:
            lat, lon = PLACES[i % len(PLACES)]
            return call(f"{base}/tag?lat={lat}&lon={lon}&k=10", jpegs[i % len(jpegs)])

        rows = []
        for name, fn in (("GET /photos", photos), ("POST /tag", tag)):
            load(fn, 1, 1.0)
            for c in args.clients:
                r = load(fn, c, args.seconds, probe=lambda: call(f"{base}/health"))
                rows.append([name, str(c), f"{r['rps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                             str(r["failed"]), f"{r['health_p99_ms']:.1f}"])
                print(" | ".join(rows[-1]), flush=True)
        end_rss = rss_gb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    n = args.photos
    per_photo = {name: size / n for name, size in files.items() if name not in ("tags.parquet", "images.faiss.json")}
    index_bytes = files["images.faiss"]
    sizes = [["photos", f"{n:,}"], ["export written", f"{export_s:.0f} s"],
             ["build (arrays, OPQ+IVF-PQ training and filling, ball tree)", f"{build_s:.0f} s"],
             ["build peak RSS", f"{build_gb:.2f} GB"],
             ["index", f"{index['kind']}: {index['ivf_lists']:,} lists, {index['pq_bytes']} bytes a code, "
                       f"nprobe {index['nprobe']}, re-scoring max({index['refine']} k, {index['refine_min']})"],
             ["index file", f"{index_bytes / GB:.2f} GB ({index_bytes / n:.1f} bytes a photo)"],
             ["gallery on disk", f"{sum(files.values()) / GB:.2f} GB"],
             [f"recall@10 against exact ({args.queries} tag queries)", f"{served:.3f} served (codes alone {codes:.3f})"],
             ["index search, top 10: p50 / p99", f"{top10_ms[0]:.1f} / {top10_ms[1]:.1f} ms"],
             [f"index search, shortlist of {cfg.search.images}: p50 / p99", f"{shortlist_ms[0]:.1f} / {shortlist_ms[1]:.1f} ms"],
             [f"nearby search, {cfg.search.nearby} photos: p50 / p99", f"{nearby_ms[0]:.2f} / {nearby_ms[1]:.2f} ms"],
             ["service RSS at start: own (anonymous) + mapped files",
              f"{start_rss['RssAnon']:.2f} + {start_rss['RssFile']:.2f} GB"],
             ["service RSS after the load: own + mapped files (peak)",
              f"{end_rss['RssAnon']:.2f} + {end_rss['RssFile']:.2f} GB ({end_rss['VmHWM']:.2f} GB)"]]
    scaled = {name: b * TARGET for name, b in per_photo.items()}
    resident = end_rss["RssAnon"] * GB + scaled["images.faiss"] + scaled["spatial.joblib"]
    rescored = max(int(cfg.search.images) * index["refine"], index["refine_min"]) + int(cfg.search.nearby)
    projection = [[name, f"{b:.1f}", f"{scaled[name] / GB:.1f}"] for name, b in sorted(per_photo.items())]
    text = ("Synthetic photos from the demo's export (bench/search_scale.py's doc says how), one machine, 2 cores:\n\n"
            + table(["", "measured"], sizes) + "\n\n"
            + f"The service under load (gallery served directly, {args.seconds:g} s a row; `/health` p99 while loaded):\n\n"
            + table(["endpoint", "clients", "req/s", "p50 ms", "p99 ms", "failed", "/health p99 ms"], rows) + "\n\n"
            + "Projection to 100M photos (bytes per photo as measured, times 100M):\n\n"
            + table(["file", "bytes a photo", "GB at 100M"], projection) + "\n\n"
            + f"Resident at 100M, if every page of the index and of the ball tree stayed in memory: the service's own "
              f"memory after the load ({end_rss['RssAnon']:.2f} GB, which does not grow with the gallery) + the index "
              f"({scaled['images.faiss'] / GB:.1f} GB) + the tree ({scaled['spatial.joblib'] / GB:.1f} GB) = "
              f"**{resident / GB:.1f} GB** (goal: 16 GB). The embeddings ({scaled['embedding.npy'] / GB:.0f} GB) stay "
              f"on disk, mapped with MADV_RANDOM: a `/photos` request reads the rows it re-scores and reranks "
              f"(at most {rescored:,}, {rescored * per_photo['embedding.npy'] / 2**20:.1f} MB); what the page cache "
              f"keeps of them is the mapped-files share above, which the kernel drops under pressure.")
    print(text)
    if args.doc:
        write_block(args.doc, "search-scale", text,
                    f"python bench/search_scale.py --photos {n} {' '.join(args.overrides)}".strip())
    if not args.keep:
        shutil.rmtree(export, ignore_errors=True)
        shutil.rmtree(gallery_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
