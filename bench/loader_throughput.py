"""The image loader's images/s per core, against a plain decode of the same JPEGs (its ceiling).

    python bench/loader_throughput.py [--images 1500] [--source-size 500] [--crop 224] [--batch 64]
                                      [--repeats 7] [--doc docs/gpu.md]

A real shard first: a synthetic world's photos (``--source-size`` px) through the shard task
(:func:`pipeline.shards.shard_writer`, short side 300 px as the full-scale shards). Then, on one
core (one process, one thread), alternating, the median of ``--repeats`` passes over the shard's
JPEGs of:

- the ceiling: the fastest, in each repeat, of three plain decodes of every whole JPEG, nothing
  else (not even the pixels copied out): PIL's (opened, DCT scaling to the crop as the loader
  would, loaded), torchvision's ``decode_jpeg`` (from tensors made beforehand) and TurboJPEG's
  (the ``turbojpeg`` wheel's ``decompress``; when it is installed);
- the loader: :class:`training.data.shards.ShardStream`'s training batches (``--crop`` px random
  crops, flips drawn, tags, locations), the work one DataLoader worker does, here in this process.
  It decodes only each crop (:mod:`training.data.turbojpeg`), so it can pass the ceiling;
- the same with whole decodes (``LOCSENS_TURBOJPEG=off``: torchvision's, the crop copied out);
- the loader in a DataLoader worker: the same batches made in a worker process, in shared memory,
  and sent to this one: the worker's own CPU seconds (its threads included), over two passes after
  a first that warms it up; with its blocks reused (:mod:`training.data.shared`), and with a new
  block for every batch;
- before: the batch as it was built up to 8d8b7e6 (rows gathered with their JPEGs, an RGB copy
  and a PIL crop per image, then a stacked copy, a flipped copy, ``torch.where`` and an NCHW
  ``contiguous`` copy), kept here as the baseline;
- ``data.decode=device``: the workers' part when the GPU decodes (rows read, JPEG bytes and draws
  shipped): what is left of the CPU's work per image.

Time is the process's CPU time (all its threads), not the wall clock: images/s per core, and
steady on a shared machine whose wall clock drifts. Every figure is a ratio against the ceiling
measured in the same run. A worker per core scales
this on a GPU node (``data.num_workers`` null: the node's cores per rank, less one).
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset
from torchvision.io import ImageReadMode, decode_jpeg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from shard_reads import rows, world  # noqa: E402

from common.contract import Manifest, ShardFile, SplitInfo, write_manifest  # noqa: E402
from common.markdown import table as md_table  # noqa: E402
from common.markdown import write_block  # noqa: E402
from pipeline import shards  # noqa: E402
from training.data import shared  # noqa: E402
from training.data import turbojpeg as crops  # noqa: E402
from training.data.shards import ShardStream  # noqa: E402

try:
    import turbojpeg
except ImportError:              # not on every platform ([train] has it on x86-64 Linux)
    turbojpeg = None


def real_shard(work: Path, images: int, source_size: int, short_side: int = 300) -> Path:
    """A one-file shard directory of the world's photos at ``short_side`` px, written by the shard task."""
    out = work / (f"loader_shard_{images}_img{source_size}" + ("" if short_side == 300 else f"_{short_side}px"))
    if (out / "manifest.json").exists():
        return out
    root = world(work, images, source_size) / "images"
    settings = shards.ShardSettings(out_dir=f"file:{out}", image_source="mmcommons",
                                    image_root=f"file:{root}", short_side=short_side, quality=90, rows_per_group=256,
                                    read_threads=2)
    written = [r for b in shards.shard_writer(settings)(iter([pa.RecordBatch.from_pylist(rows(root))]))
               for r in b.to_pylist() if r["kind"] == "file"]
    files = [ShardFile(r["path"], [int(n) for n in r["row_groups"]]) for r in written]
    write_manifest(out, Manifest(vocab_size=3, image_size=short_side, splits={"train": SplitInfo(files)}))
    return out


def jpegs_of(directory: Path) -> list[bytes]:
    return [b for p in sorted((directory / "train").glob("*.parquet"))
            for b in pq.read_table(p, columns=["image"]).column("image").to_pylist()]


def plain_pil(jpegs: list[bytes], crop: int) -> float:
    t = time.process_time()
    for b in jpegs:
        im = Image.open(io.BytesIO(b))
        im.draft("RGB", (crop, crop))
        im.load()
    return len(jpegs) / (time.process_time() - t)


def plain_torchvision(jpegs: list[torch.Tensor]) -> float:
    t = time.process_time()
    for b in jpegs:
        decode_jpeg(b, mode=ImageReadMode.RGB)
    return len(jpegs) / (time.process_time() - t)


def plain_turbojpeg(jpegs: list[bytes]) -> float:
    t = time.process_time()
    for b in jpegs:
        turbojpeg.decompress(b, turbojpeg.PF.RGB)
    return len(jpegs) / (time.process_time() - t)


def whole(directory: Path, crop: int, batch: int) -> float:
    """The loader with the crop decoder off: each JPEG decoded whole, the crop copied out."""
    os.environ[crops.ENV] = "off"
    crops.decoder.cache_clear()
    try:
        return loader(directory, crop, batch)
    finally:
        del os.environ[crops.ENV]
        crops.decoder.cache_clear()


def _stream(directory: Path, crop: int, batch: int, decode: str = "cpu") -> ShardStream:
    """The training stream every loader row measures."""
    return ShardStream(directory, "train", batch_size=batch, crop=crop, train=True, shuffle=True, seed=1,
                       decode=decode)


def loader(directory: Path, crop: int, batch: int, decode: str = "cpu") -> float:
    stream = _stream(directory, crop, batch, decode)
    t, n = time.process_time(), 0
    for b in stream:
        n += b["photo_id"].shape[0]
    return n / (time.process_time() - t)


class _Timed(IterableDataset):
    """A stream iterated ``passes`` times in a DataLoader worker, then the worker's CPU seconds and
    images after the first pass (which pays for the pages it shares with this process, written
    once)."""

    def __init__(self, stream: ShardStream, passes: int):
        self.stream, self.passes = stream, passes

    def __iter__(self):
        t, n = time.process_time(), 0
        for p in range(self.passes):
            if p == 1:
                t = time.process_time()
            for b in self.stream:
                n += b["photo_id"].shape[0] if p else 0
                yield b
        yield {"cpu": torch.tensor(time.process_time() - t), "images": torch.tensor(n)}


def in_worker(directory: Path, crop: int, batch: int, passes: int = 3, pooled: bool = True) -> float:
    """``pooled`` False: the worker makes a new shared block for every batch (no pool; the worker
    inherits the setting when it starts)."""
    kept, shared.POOL_BLOCKS = shared.POOL_BLOCKS, shared.POOL_BLOCKS if pooled else 0
    try:
        timed = _Timed(_stream(directory, crop, batch), passes)
        for last in DataLoader(timed, batch_size=None, num_workers=1):
            pass
    finally:
        shared.POOL_BLOCKS = kept
    return last["images"].item() / last["cpu"].item()


def _decode_before(jpeg: bytes, crop: int, gen: torch.Generator) -> np.ndarray:
    """A training crop as decoded up to 8d8b7e6: convert (a copy even of RGB), PIL crop, asarray."""
    im = Image.open(io.BytesIO(jpeg))
    im.draft("RGB", (crop, crop))
    im = im.convert("RGB")
    w, h = im.size
    r = torch.randint(0, 1 << 30, (2,), generator=gen).tolist()
    x, y = r[0] % (w - crop + 1), r[1] % (h - crop + 1)
    return np.asarray(im.crop((x, y, x + crop, y + crop)))


def before(directory: Path, crop: int, batch: int) -> float:
    """The batch as built up to 8d8b7e6: the row group's rows gathered (a copy of their JPEGs),
    decoded, np.stack, flip drawn, torch.where, NCHW contiguous."""
    gen = torch.Generator().manual_seed(1)
    t, n = time.process_time(), 0
    for path in sorted((directory / "train").glob("*.parquet")):
        f = pq.ParquetFile(path)
        for g in range(f.num_row_groups):
            rows = f.read_row_group(g, columns=["photo_id", "latitude", "longitude", "tag_ids", "image"])
            for i in range(0, rows.num_rows, batch):
                part = rows.take(pa.array(np.arange(i, min(i + batch, rows.num_rows))))
                images = np.stack([_decode_before(b, crop, gen) for b in part.column("image").to_pylist()])
                image = torch.from_numpy(images).permute(0, 3, 1, 2)
                flip = torch.rand(image.shape[0], generator=gen) < 0.5
                image = torch.where(flip[:, None, None, None], image.flip(-1), image).contiguous()
                n += image.shape[0]
    return n / (time.process_time() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--source-size", type=int, default=500)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--doc", type=Path, default=None, help="write the table into this page's loader-throughput block")
    args = p.parse_args()
    torch.set_num_threads(1)
    directory = real_shard(args.work.resolve(), args.images, args.source_size)
    jpegs = jpegs_of(directory)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    measure = {"pil": lambda: plain_pil(jpegs, args.crop), "torchvision": lambda: plain_torchvision(tensors),
               "turbojpeg": lambda: plain_turbojpeg(jpegs),
               "loader": lambda: loader(directory, args.crop, args.batch),
               "whole": lambda: whole(directory, args.crop, args.batch),
               "worker": lambda: in_worker(directory, args.crop, args.batch),
               "fresh": lambda: in_worker(directory, args.crop, args.batch, pooled=False),
               "before": lambda: before(directory, args.crop, args.batch),
               "bytes": lambda: loader(directory, args.crop, args.batch, decode="device")}
    if turbojpeg is None or crops.decoder() is None:
        print("no TurboJPEG 3 library: the loader decodes whole images (pip install turbojpeg)",
              file=sys.stderr)
        del measure["turbojpeg"], measure["whole"]
    runs: dict[str, list[float]] = {k: [] for k in measure}
    order = list(measure)
    for r in range(args.repeats):          # the order rotates: no path always runs first
        for name in order[r % len(order):] + order[:r % len(order)]:
            runs[name].append(measure[name]())
    plain = [k for k in ("pil", "torchvision", "turbojpeg") if k in runs]
    runs = {"ceiling": [max(r) for r in zip(*(runs[k] for k in plain))], **runs}
    med = {k: statistics.median(v) for k, v in runs.items()}
    # Of the ceiling: the median of each repeat's ratio (the two ran side by side in time, on a
    # machine whose speed drifts).
    share = {k: statistics.median(x / c for x, c in zip(v, runs["ceiling"])) for k, v in runs.items()}
    head = ["path (one core)", "images/s", "of the ceiling", "runs"]
    labels = {"ceiling": "plain decode of the shard's whole JPEGs, the fastest below (the ceiling)",
              "pil": "plain decode: PIL",
              "torchvision": "plain decode: torchvision's decode_jpeg",
              "turbojpeg": "plain decode: TurboJPEG",
              "loader": "the loader's training batches (crops decoded alone; uint8 NHWC, flip on the device)",
              "whole": "the same, each JPEG decoded whole (LOCSENS_TURBOJPEG=off)",
              "worker": "the loader in a DataLoader worker (batches in shared memory, sent; blocks reused)",
              "fresh": "the same, a new block of shared memory for every batch",
              "before": "the batch as built up to 8d8b7e6",
              "bytes": "data.decode=device: the workers ship JPEG bytes (the GPU decodes)"}
    body = [[labels[k], f"{med[k]:,.0f}", f"{share[k]:.2f}", ", ".join(f"{x:.0f}" for x in runs[k])]
            for k in ("ceiling", "pil", "torchvision", "turbojpeg", "loader", "whole", "worker", "fresh",
                      "before", "bytes")
            if k in runs]
    text = (f"{len(jpegs):,} JPEGs of a real shard (300 px short side, from {args.source_size} px photos), "
            f"{args.crop} px crops, batches of {args.batch}, one process, images per CPU second; median of "
            f"{args.repeats} repeats (of the ceiling: the median of each repeat's ratio).\n\n" + md_table(head, body))
    print(text)
    if args.doc:
        write_block(args.doc, "loader-throughput", text, " ".join(["python bench/loader_throughput.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
