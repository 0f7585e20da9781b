"""Shard writing, images/s: concurrent reads inside a task against one image at a time.

    python bench/shard_reads.py [--images 3000] [--source-size 500] [--threads 8] [--repeats 3]

One shard task's work (:func:`pipeline.shards.shard_writer`, the function each Spark task runs)
over the images of a synthetic world (``--source-size`` px, about a Flickr medium photo), resized
to 300 px, with ``read_threads=1`` (the old one-at-a-time reading) and ``read_threads=N``,
alternating, in fresh output folders; prints the median images/s of each and their ratio. Reads
come from the local disk here: on object storage, where each read waits tens of milliseconds,
the gain of overlapping reads is larger than this measures.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import shards  # noqa: E402


def world(work: Path, images: int, size: int) -> Path:
    out = work / f"reads_world_{images}_img{size}"
    subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(out), "--photos", str(images), "--seed", "5",
                    "--image-size", str(size), "--workers", "2", "--skip-existing"], check=True, cwd=ROOT)
    return out


def rows(root: Path) -> list[dict]:
    """One shard's rows: every image of the world, with the contract's metadata filled in."""
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    return [{"photo_id": i, "user_nsid": "u", "latitude": 1.0, "longitude": 2.0, "tag_ids": [1, 2], "town": "t",
             "region": "r", "country": "c", "continent": "e", "split": "train", "shard": 0, "_order": i,
             "image_path": p} for i, p in enumerate(paths)]


def images_per_second(batch: pa.RecordBatch, root: Path, out: Path, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    settings = shards.ShardSettings(out_dir=f"file:{out}", image_source="mmcommons", image_root=f"file:{root}",
                                    short_side=300, quality=90, rows_per_group=1000, read_threads=threads)
    t = time.perf_counter()
    records = [r for b in shards.shard_writer(settings)(iter([batch])) for r in b.to_pylist()]
    elapsed = time.perf_counter() - t
    written = sum(sum(r["row_groups"]) for r in records if r["kind"] == "file")
    return written / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--source-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    args = p.parse_args()
    root = world(args.work.resolve(), args.images, args.source_size) / "images"
    batch = pa.RecordBatch.from_pylist(rows(root))
    serial, concurrent = [], []
    for _ in range(args.repeats):
        serial.append(images_per_second(batch, root, args.work / "reads_out", 1))
        concurrent.append(images_per_second(batch, root, args.work / "reads_out", args.threads))
    s, c = statistics.median(serial), statistics.median(concurrent)
    print(f"{batch.num_rows:,} images of {args.source_size} px -> 300 px, one task, median of {args.repeats}")
    print(f"read_threads=1:  {s:8.1f} images/s   (runs: {', '.join(f'{x:.0f}' for x in serial)})")
    print(f"read_threads={args.threads}: {c:8.1f} images/s   (runs: {', '.join(f'{x:.0f}' for x in concurrent)})")
    print(f"concurrent / one at a time: {c / s:.2f}")


if __name__ == "__main__":
    main()
