"""How much of the training set an image meets as a negative: distinct batch-mates and distinct
candidate negatives per image over training, replayed from the loader's own batching plan.

LocSens draws replacement images for an image's negatives from the rows that travel with it. The
authors drew them from the whole training set. This replays the plan of the embeddings stream
(:func:`training.data.plan.plan_epoch` and :func:`training.data.plan.deal_window`, the same seeded draws the
stream makes, no data read) for a tracked sample of images and counts, over all epochs:

- batch-mates: the other images of the image's batches;
- candidate negatives: batch-mates plus the rows of each batch's negative pool.

The baseline, replayed in the same run, is the stream before pools: rows shuffled only inside a
batch (a batch is a contiguous slice of a row group) and negatives taken from the batch.

    python bench/locsens_negatives.py [--rows 2000000] [--epochs 30] [--batch 1024]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data.plan import deal_window, plan_epoch  # noqa: E402


def replay(unit_rows: np.ndarray, *, batch: int, epochs: int, window: int, pool: int, tracked: np.ndarray,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(distinct batch-mates, distinct candidate negatives) per tracked image, one worker, one rank."""
    starts = np.concatenate([[0], np.cumsum(unit_rows)[:-1]])
    where = {int(t): i for i, t in enumerate(tracked)}
    mates: list[list[np.ndarray]] = [[] for _ in tracked]
    pools: list[list[np.ndarray]] = [[] for _ in tracked]
    for epoch in range(epochs):
        plan = plan_epoch(unit_rows, batch_size=batch, seed=seed, epoch=epoch)
        rng = np.random.default_rng([seed, epoch, 0, 0])          # the stream's per-worker seed
        for w in range(0, len(plan), window):
            batches = plan[w:w + window]
            ids = np.concatenate([starts[u] + np.arange(a, b) for bt in batches for u, a, b in bt.segments])
            for take, pool_rows in deal_window([bt.size for bt in batches], rng, True, pool):
                members = ids[take]
                hit = [where[int(m)] for m in members[np.isin(members, tracked)]]
                for i in hit:
                    mates[i].append(members)
                    if pool_rows is not None:
                        pools[i].append(ids[pool_rows])
    own = tracked
    n_mates = np.array([np.setdiff1d(np.concatenate(m), [o]).size for m, o in zip(mates, own)])
    n_cand = np.array([np.setdiff1d(np.concatenate(m + p), [o]).size for m, p, o in zip(mates, pools, own)])
    return n_mates, n_cand


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--row-group", type=int, default=65_536, help="the embeddings export's row groups")
    ap.add_argument("--shuffle-rows", type=int, default=262_144, help="data.shuffle_rows")
    ap.add_argument("--pool", type=int, default=1024, help="data.negative_pool")
    ap.add_argument("--tracked", type=int, default=500)
    args = ap.parse_args()
    groups = -(-args.rows // args.row_group)
    unit_rows = np.full(groups, args.row_group, dtype=np.int64)
    unit_rows[-1] = args.rows - args.row_group * (groups - 1)
    tracked = np.sort(np.random.default_rng(1).choice(args.rows, args.tracked, replace=False))
    print(f"{args.rows:,} rows in {groups} row groups of {args.row_group:,}, batch {args.batch}, "
          f"{args.epochs} epochs, {args.tracked} tracked images")
    t0 = time.perf_counter()
    before = replay(unit_rows, batch=args.batch, epochs=args.epochs, window=1, pool=0, tracked=tracked)
    window = max(1, -(-args.shuffle_rows // args.batch))
    after = replay(unit_rows, batch=args.batch, epochs=args.epochs, window=window, pool=args.pool, tracked=tracked)
    print(f"{'distinct, per image':52}{'median':>10}{'p10':>10}{'p90':>10}")
    for name, (m, c) in (("batch only (baseline)", before), (f"window {args.shuffle_rows:,} + pool {args.pool}", after)):
        for what, v in (("batch-mates", m), ("candidate negatives", c)):
            label = f"{name}: {what}"
            print(f"{label:52}{np.median(v):10,.0f}{np.percentile(v, 10):10,.0f}{np.percentile(v, 90):10,.0f}")
    print(f"ratio, median batch-mates:          {np.median(after[0]) / np.median(before[0]):.1f}x")
    print(f"ratio, median candidate negatives:  {np.median(after[1]) / np.median(before[1]):.1f}x")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
