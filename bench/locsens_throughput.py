"""LocSens throughput on this machine: training positives/s, the embeddings loader's rows/s, and
tagging images/s against a 100k-tag vocabulary next to the authors' way of scoring.

- training: the paper's network, batches of 1024 positives with 6 negatives each (vectorised
  negatives, location sampling, forward, backward, SGD step), each batch with a negative pool of
  1024 rows (older code ignores it);
- loader: one epoch of :class:`training.data.embeddings.EmbeddingStream` over a synthetic export
  (300-d, row groups of 65,536), as training streams it;
- tagging: :func:`training.evaluate.locsens.tag_images` (each projection and each modality's part of
  the first layer computed once, the rest of the MLP per pair) against
  :func:`training.evaluate.locsens.tag_images_naive` (per image, a batch of V copies of the image and
  location with every tag, everything recomputed), on the same random weights.

``--baseline REV`` measures training and loading with the code of git revision REV too, in the
same run (a temporary worktree, measurements alternating in fresh processes), and prints the
ratios: how a change moved throughput, free of the machine's mood that day.

    python bench/locsens_throughput.py [--tags 100000] [--images 2] [--steps 5] [--baseline HEAD~3]
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def training_rate(steps: int, batch: int, num_tags: int, pool: int = 1024, device: str = "cpu",
                  precision: str = "32", hidden: Optional[list[int]] = None) -> float:
    """Positives per second of training steps (imports the ``training`` package on sys.path), on
    ``device`` under ``precision`` (32, or bf16 mixed), with the paper's MLP unless ``hidden``."""
    from training.evaluate.locsens import autocast
    from training.models.locsens import LocSens

    extra = {"hidden": hidden} if hidden else {}
    model = LocSens(num_tags=num_tags, optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9,
                                                                   weight_decay=1e-4), location="sampling", **extra)
    model.set_tag_embeddings(torch.randn(num_tags, 300))
    model.to(device)
    model.sigma = 0.1
    opt = model.optimizer_factory(params=model.parameters())
    rng = np.random.default_rng(0)
    tags = torch.full((batch + pool, 15), -1, dtype=torch.int64)
    counts = rng.integers(1, 8, batch + pool)
    for i, c in enumerate(counts):
        tags[i, :c] = torch.as_tensor(rng.choice(num_tags, c, replace=False))
    data = {"embedding": torch.randn(batch, 300), "tag_ids": tags[:batch],
            "latitude": torch.rand(batch) * 180 - 90, "longitude": torch.rand(batch) * 360 - 180,
            "pool_embedding": torch.randn(pool, 300), "pool_tag_ids": tags[batch:]}
    data = {k: v.to(device) for k, v in data.items()}
    dev = torch.device(device)

    def step():
        opt.zero_grad()
        with autocast(dev, precision):
            loss = model.triplet_loss(data, train=True)
        loss.backward()
        opt.step()
    step()                                   # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps * batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_export(out: Path, rows: int, num_tags: int = 1000, dim: int = 300) -> Path:
    """A synthetic embeddings export in the layout common.embeddings writes (train split only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from common.embeddings import (MANIFEST_NAME, TAGS_FILE, EmbeddingsManifest, embeddings_to_arrow,
                                   image_schema, tag_schema)

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays([pa.array(np.arange(num_tags, dtype=np.int32)),
                                         pa.array([f"t{i}" for i in range(num_tags)]),
                                         embeddings_to_arrow(rng.normal(size=(num_tags, dim)), dim)],
                                        schema=tag_schema(dim)), out / TAGS_FILE)
    counts = rng.integers(1, 8, rows)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    table = pa.Table.from_arrays([
        pa.array(np.arange(rows, dtype=np.int64)), pa.array(["train"] * rows),
        embeddings_to_arrow(rng.normal(size=(rows, dim)).astype(np.float32), dim),
        pa.array(rng.uniform(-90, 90, rows)), pa.array(rng.uniform(-180, 180, rows)),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, num_tags, offsets[-1]).astype(np.int32)))],
        schema=image_schema(dim))
    rel = "images/train/part-r00000-of-00001.parquet"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / rel, row_group_size=65_536)
    manifest = EmbeddingsManifest(model="MCC", score="cosine", dim=dim, num_tags=num_tags,
                                  splits={"train": {"files": [{"path": rel, "rows": rows}], "rows": rows}})
    (out / MANIFEST_NAME).write_text(manifest.to_json())
    return out


def loader_rate(export: Path, batch: int) -> float:
    """Rows per second of one training epoch of the embeddings stream (with its pool, if it has one)."""
    from training.data.embeddings import EmbeddingStream

    extra = {"negative_pool": 1024} if "negative_pool" in inspect.signature(EmbeddingStream).parameters else {}
    stream = EmbeddingStream(export, "train", batch_size=batch, shuffle=True, **extra)
    t0 = time.perf_counter()
    rows = sum(int(b["embedding"].shape[0]) for b in stream)
    return rows / (time.perf_counter() - t0)


def _worker(args: argparse.Namespace) -> None:
    """Measure one thing with the code of ``--tree`` (run in a fresh process)."""
    sys.path.insert(0, args.tree)
    torch.manual_seed(0)
    if args.worker == "training":
        rate = training_rate(args.steps, args.batch, args.tags)
    else:
        rate = loader_rate(Path(args.export), args.batch)
    print(json.dumps({"rate": rate}))


def _measure(tree: Path, what: str, args: argparse.Namespace, export: Path) -> float:
    cmd = [sys.executable, __file__, "--worker", what, "--tree", str(tree), "--export", str(export),
           "--steps", str(args.steps), "--batch", str(args.batch), "--tags", str(args.tags)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])["rate"]


def compare(args: argparse.Namespace) -> None:
    """This tree against ``--baseline``, alternating, ``--rounds`` times each."""
    with tempfile.TemporaryDirectory(prefix="locsens-bench-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.baseline], check=True, cwd=ROOT)
        try:
            sys.path.insert(0, str(ROOT))
            export = write_export(Path(tmp) / "export", args.loader_rows)
            for what, unit in (("training", "positives/s"), ("loader", "rows/s")):
                rates: dict[str, list[float]] = {"baseline": [], "this tree": []}
                for _ in range(args.rounds):
                    rates["baseline"].append(_measure(base, what, args, export))
                    rates["this tree"].append(_measure(ROOT, what, args, export))
                b, t = (statistics.median(rates[k]) for k in ("baseline", "this tree"))
                print(f"{what:9} baseline {args.baseline}: {b:10,.0f} {unit}   this tree: {t:10,.0f} {unit}   "
                      f"ratio {t / b:.3f}  (medians of {args.rounds} alternating runs)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], check=False, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--baseline", help="git revision to measure training and loading against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loader-rows", type=int, default=300_000)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--export", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    if args.baseline:
        return compare(args)
    sys.path.insert(0, str(ROOT))
    from training.evaluate.locsens import tag_images, tag_images_naive
    from training.models.locsens import LocSens

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    rate = training_rate(args.steps, args.batch, args.tags)
    print(f"training:  {rate:10,.0f} positives/s  (batch {args.batch} positives x 6 negatives, paper network)")

    model = LocSens(num_tags=args.tags, optimizer=functools.partial(torch.optim.SGD, lr=0.1)).eval()
    net = model.net
    tags = torch.nn.functional.normalize(torch.randn(args.tags, 300), dim=-1)
    images, loc = torch.randn(args.images, 300), torch.rand(args.images, 2)
    with torch.no_grad():
        tag_images(net, images[:1], loc[:1], tags, k=50)          # warm-up
        t0 = time.perf_counter()
        ours = tag_images(net, images, loc, tags, k=50, pairs=1 << 16)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = tag_images_naive(net, images, loc, tags, k=50)
        t_naive = time.perf_counter() - t0
    agree = float(np.mean([len(set(a) & set(b)) / 50 for a, b in zip(ours, theirs)]))
    print(f"tagging:   {args.images / t_ours:10.3f} images/s against {args.tags:,} tags (projection reuse)")
    print(f"authors':  {args.images / t_naive:10.3f} images/s (V copies per image)   "
          f"ratio {t_naive / t_ours:.2f}x, top-50 agreement {agree:.0%}")
    macs = args.tags * 13.3e6
    print(f"work:      {macs / 1e12:.2f} TMAC per image scored against every tag")


if __name__ == "__main__":
    main()
