"""LocSens throughput on this machine: training positives/s, and tagging images/s against a
100k-tag vocabulary, next to the authors' way of scoring measured in the same run.

- training: the paper's network, batches of 1024 positives with 6 negatives each (vectorised
  negatives, forward, backward, SGD step);
- tagging: :func:`training.locsens_eval.tag_images` (each projection and each modality's part of
  the first layer computed once, the rest of the MLP per pair) against
  :func:`training.locsens_eval.tag_images_naive` (per image, a batch of V copies of the image and
  location with every tag, everything recomputed), on the same random weights.

    python bench/locsens_throughput.py [--tags 100000] [--images 2] [--steps 5]
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.locsens import LocSens  # noqa: E402
from training.locsens_eval import tag_images, tag_images_naive  # noqa: E402


def training_rate(steps: int, batch: int, num_tags: int) -> float:
    model = LocSens(num_tags=num_tags, optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9,
                                                                   weight_decay=1e-4), location="sampling")
    model.set_tag_embeddings(torch.randn(num_tags, 300))
    model.sigma = 0.1
    opt = model.optimizer_factory(params=model.parameters())
    rng = np.random.default_rng(0)
    tags = torch.full((batch, 15), -1, dtype=torch.int64)
    counts = rng.integers(1, 8, batch)
    for i, c in enumerate(counts):
        tags[i, :c] = torch.as_tensor(rng.choice(num_tags, c, replace=False))
    data = {"embedding": torch.randn(batch, 300), "tag_ids": tags,
            "latitude": torch.rand(batch) * 180 - 90, "longitude": torch.rand(batch) * 360 - 180}
    def step():
        opt.zero_grad()
        loss = model.triplet_loss(data, train=True)
        loss.backward()
        opt.step()
    step()                                   # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
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
    print(f"work:      {macs / 1e12:.2f} TMAC per image scored against every tag (SPEC 7)")


if __name__ == "__main__":
    main()
