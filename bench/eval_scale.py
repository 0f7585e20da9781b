"""How long evaluation takes at the paper's scale, per scoring mode, projected from rates measured here.

Measured in one run, on random weights of the paper's networks (the rates do not depend on what
the weights learnt) and random 300-d embeddings:

- exact: LocSens (MLP 2048-2048-2048-1024-512) scoring every (image, tag) pair for tagging and every
  (query, gallery image) pair for retrieval: triplets/s;
- rerank: tagging = MCC's cosine against the whole vocabulary, then LocSens on the ``--shortlist``
  best tags (images/s); retrieval = a FAISS HNSW search for the tag plus a ball-tree search for the
  place, then LocSens on the candidates (queries/s); the index build is timed too (images/s);
- factorised: tagging = one matrix product against the vocabulary and a top-k (images/s);
  retrieval = what its evaluator does, exact inner products over the whole gallery and a top-k
  (queries/s at ``--gallery`` images, projected in proportion to the paper's gallery).

Then a table projects full-scale evaluation on this machine from those rates and the paper's sizes
(500k test images, 100k tags, one retrieval query per test image; the sigma run evaluates five
snapshots, scored on retrieval only: the sigma run trains a retrieval model), with the speed-up
of each mode over exact. Rates scale with cores and GPUs; the
ratios are what carry over.

    python bench/eval_scale.py [--tags 100000] [--gallery 50000] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.markdown import write_block  # noqa: E402
from training.evaluate.locsens import reranked_images, reranked_tags, retrieve_images, tag_images_masked  # noqa: E402
from training.evaluate.rerank import RerankSettings, build_gallery_indexes, retrieval_candidates  # noqa: E402
from training.evaluate.factorised import retrieve_images as factorised_retrieve  # noqa: E402
from training.evaluate.topk import top_k  # noqa: E402
from training.models.factorised import FactorisedNet  # noqa: E402
from training.models.locsens import LocSensNet  # noqa: E402

PAPER = {"images": 500_000, "tags": 100_000, "queries": 500_000, "snapshots": 5}


def rate(fn, units: float, min_seconds: float = 3.0) -> float:
    """Units per second of ``fn`` (repeated until ``min_seconds`` have passed; first call is warm-up)."""
    fn()
    done, start = 0, time.perf_counter()
    while True:
        fn()
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return units * done / elapsed


def random_world(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    emb = torch.tensor(rng.normal(size=(n, 300)), dtype=torch.float32)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(-180, 180, n)
    loc = torch.tensor(np.c_[(lat + 90) / 180, (lon + 180) / 360], dtype=torch.float32)
    return emb, loc, lat, lon


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 360 else f"{seconds / 60:,.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=100_000, help="vocabulary size measured (the paper's: 100k)")
    ap.add_argument("--gallery", type=int, default=50_000, help="gallery images in the retrieval measurements")
    ap.add_argument("--shortlist", type=int, default=100, help="rerank: tags per image")
    ap.add_argument("--candidates", default="100:50", help="rerank: retrieval candidates IMAGES:NEARBY")
    ap.add_argument("--pairs", type=int, default=1 << 16, help="triplets per LocSens chunk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum measuring time per figure")
    ap.add_argument("--doc", type=Path, help="also write the table into this Markdown page's block eval-scale")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    v = args.tags
    images_n, queries_n = 16, 16          # rerank: a batch of images / queries per measurement
    k_images, k_nearby = (int(x) for x in args.candidates.split(":"))
    locsens = LocSensNet().eval()                      # the paper's network
    factorised = FactorisedNet(v).eval()
    tag_table = torch.tensor(rng.normal(size=(v, 300)), dtype=torch.float32)
    factorised.set_tag_table(tag_table)
    images, loc, lat, lon = random_world(args.gallery, rng)
    q_tags = torch.as_tensor(rng.integers(0, v, queries_n))
    q_rows = rng.integers(0, args.gallery, queries_n)
    settings = RerankSettings(tags=args.shortlist, images=k_images, nearby=k_nearby, index="hnsw")
    print(f"measuring on {args.threads} threads: {v:,} tags, gallery of {args.gallery:,} images, "
          f"shortlist {args.shortlist} tags, {k_images}+{k_nearby} retrieval candidates\n")
    r: dict[str, float] = {}
    with torch.no_grad():
        # Exact's per-pair rate on 8 images x 8,192 keys: projecting the keys (once per evaluation at
        # full scale) then costs <1% of scoring the pairs, as it does at full scale.
        sub = min(args.gallery, v, 8192)
        few = max(1, args.pairs // sub)
        r["exact tagging triplets/s"] = rate(lambda: tag_images_masked(
            locsens, images[:few], loc[:few], tag_table[:sub], 50, args.pairs, [None]), few * sub, args.seconds)
        r["exact retrieval triplets/s"] = rate(lambda: retrieve_images(
            locsens, images[:sub], q_tags[:few] % sub, loc[q_rows[:few]], tag_table[:sub], 10, args.pairs),
            few * sub, args.seconds)
        r["rerank tagging images/s"] = rate(lambda: reranked_tags(
            locsens, images[:images_n], loc[:images_n], tag_table, 50, args.pairs, [None], args.shortlist),
            images_n, args.seconds)
        start = time.perf_counter()
        ann, spatial = build_gallery_indexes(images.numpy(), lat, lon, settings)
        r["index build images/s"] = args.gallery / (time.perf_counter() - start)
        table_np = tag_table.numpy()

        def rerank_retrieval():
            cand = retrieval_candidates(ann, spatial, table_np, q_tags.numpy(), lat[q_rows], lon[q_rows], settings)
            return reranked_images(locsens, images, q_tags, loc[q_rows], tag_table, cand, 10, args.pairs)
        r["rerank retrieval queries/s"] = rate(rerank_retrieval, queries_n, args.seconds)
        keys = factorised.tag_keys(tag_table)
        n_f = 256
        r["factorised tagging images/s"] = rate(lambda: top_k(
            factorised.tag_queries(images[:n_f], loc[:n_f]), keys, 50, 64), n_f, args.seconds)

        # The factorised evaluator's own retrieval: exact inner products over the whole gallery (not the
        # HNSW search a service would use), so its cost grows with the gallery: projected below by size.
        r["factorised retrieval queries/s"] = rate(lambda: factorised_retrieve(
            factorised, images, q_tags, loc[q_rows], tag_table, 10, args.pairs), queries_n, args.seconds)
    for name, value in r.items():
        print(f"  {name:<32} {value:>14,.1f}")

    # Full-scale projection (this machine, one process): per model, and for the sigma run's five snapshots.
    n, t, q = PAPER["images"], PAPER["tags"], PAPER["queries"]
    build = n / r["index build images/s"]
    rows = {
        "exact": (n * t / r["exact tagging triplets/s"], q * n / r["exact retrieval triplets/s"], 0.0),
        "rerank": (n / r["rerank tagging images/s"], q / r["rerank retrieval queries/s"], build),
        # exact over the gallery: a query costs in proportion to the gallery's size; no index to build
        "factorised": (n / r["factorised tagging images/s"],
                       q / r["factorised retrieval queries/s"] * n / args.gallery, 0.0),
    }
    exact_total = sum(rows["exact"])
    lines = [f"Measured on {args.threads} threads: {v:,} tags, a gallery of {args.gallery:,} images; "
             + "; ".join(f"{name} {value:,.1f}" for name, value in r.items()) + ".", "",
             f"Projected to the paper's scale on this machine ({n:,} test images, {t:,} tags, {q:,} retrieval "
             "queries):", "",
             "| mode | tagging | retrieval | index build | one model | sigma run (5 snapshots) | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for mode, (tag_s, ret_s, build_s) in rows.items():
        total = tag_s + ret_s + build_s
        # The sigma run trains a retrieval model: its snapshots are scored on retrieval only (the tagging
        # models are others, evaluated once each); the index is built once.
        sigma = ret_s * PAPER["snapshots"] + build_s
        lines.append(f"| {mode} | {hours(tag_s)} | {hours(ret_s)} | {hours(build_s) if build_s else '-'} | "
                     f"{hours(total)} | {hours(sigma)} | {exact_total / total:,.0f}x |")
    if v != t:
        lines += ["", f"(the tagging rates were measured with {v:,} tags; rerank and factorised tagging cost grows "
                      "with the vocabulary only through the cosine / matrix product)"]
    print("\n" + "\n".join(lines))
    if args.doc:
        write_block(args.doc, "eval-scale", "\n".join(lines), " ".join(["python bench/eval_scale.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
