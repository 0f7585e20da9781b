"""Shortlist-and-rerank against exact LocSens evaluation on the demo, for several candidate counts.

For each setting: recall of exact's top 10 (the share of each query's exact top 10 the reranked
top 10 keeps), the change of A@1/A@10/A@50 (tagging, with and without place names) and of P@10
at every granularity (retrieval), and the speed-up over exact, all measured in one run on the same
models and queries. Rerank times (the median of 3 runs) include making the shortlists (the MCC
cosine top-K, the place tags; building the FAISS and ball-tree indexes and searching them).

    python bench/rerank_sweep.py [--tags 50 75 100 200] [--place-tags 25]
        [--images 40:20 50:25 100:50 200:100] [--index auto] [key=value ...]

The models and data are the search gallery's (conf/serving.yaml: ``gallery.tagger``,
``gallery.retriever``, ``gallery.embeddings_dir``, ``paths.shards_dir``; the demo's by default).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import metrics as M  # noqa: E402
from common.config import compose_config  # noqa: E402
from common.markdown import table, write_block  # noqa: E402
from training.data.embeddings import LocSensDataModule  # noqa: E402
from training.data.shards import place_mask  # noqa: E402
from training.evaluate.locsens import (reranked_images, reranked_tags, retrieve_images,  # noqa: E402
                                       tag_images_masked)
from training.evaluate.rerank import (PlacePrior, RerankSettings, build_gallery_indexes,  # noqa: E402
                                      recall_of, retrieval_candidates)
from training.models.locsens import LocSens  # noqa: E402
from training.models.locations import normalise_location  # noqa: E402

KS = [1, 10, 50]


def load(checkpoint: Path) -> tuple[torch.nn.Module, float | None]:
    model = LocSens.load_from_checkpoint(str(checkpoint), map_location="cpu", optimizer=None, weights_only=True)
    return model.net.eval(), (0.0 if model.location == "zeroed" else None)


def timed(fn, repeats: int = 1):
    """(result, median seconds of ``repeats`` calls): rerank's sub-second times need several."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, sorted(times)[len(times) // 2]


def tagging_rows(net, weight, split, tags, places, shortlists: list[int], pairs: int, prior: PlacePrior,
                 place_tags: int) -> list[list[str]]:
    truth, v = split["truth"], tags.shape[0]
    images = torch.tensor(split["embedding"])
    loc = normalise_location(torch.tensor(split["latitude"]).float(), torch.tensor(split["longitude"]).float())
    masks = [None, torch.as_tensor(places)]
    with torch.no_grad():
        exact, t_exact = timed(lambda: tag_images_masked(net, images, loc, tags, 50, pairs, masks, weight))

    def metrics(ranked):
        return {**M.tagging_metrics(ranked[0], truth, v, KS),
                **M.tagging_metrics(ranked[1], truth.without(places), v, KS, suffix=M.NOPLACES)}

    ref = metrics(exact)
    rows = [["exact", f"{v}", "100.0", *(f"{ref[M.accuracy_metric_name(k, s)]:.2f}" for s in ("", M.NOPLACES)
                                          for k in KS), f"{t_exact:.2f}", "1.0"]]
    for k, p in [(k, 0) for k in shortlists] + [(k, place_tags) for k in shortlists if place_tags]:
        def run():
            extra = [] if not p else [prior.top_tags(split["latitude"], split["longitude"], 100, p,
                                                     exclude=None if m is None else places) for m in masks]
            with torch.no_grad():
                return reranked_tags(net, images, loc, tags, 50, pairs, masks, min(max(k, 50), v), weight, extra)
        ranked, t = timed(run, 3)
        got = metrics(ranked)
        rows.append(["rerank", f"{min(max(k, 50), v)}" + (f" + {p} place" if p else ""),
                     f"{recall_of(exact[0], ranked[0]):.1f}",
                     *(f"{got[M.accuracy_metric_name(kk, s)] - ref[M.accuracy_metric_name(kk, s)]:+.2f}"
                       for s in ("", M.NOPLACES) for kk in KS), f"{t:.2f}", f"{t_exact / t:.1f}"])
    return rows


def retrieval_rows(net, weight, split, tags, places, settings: list[tuple[int, int]], index: str,
                   pairs: int, seed: int) -> list[list[str]]:
    truth, v = split["truth"], tags.shape[0]
    lat, lon = split["latitude"], split["longitude"]
    images = torch.tensor(split["embedding"])
    loc = normalise_location(torch.tensor(lat).float(), torch.tensor(lon).float())
    q_rows, q_tags = M.location_queries(truth, v, seed, 10)
    qt = torch.as_tensor(q_tags)
    with torch.no_grad():
        exact, t_exact = timed(lambda: retrieve_images(net, images, qt, loc[q_rows], tags, 10, pairs, weight))
    names = [M.location_metric_name(g) for g in [*M.GRANULARITIES_KM, "agnostic"]]

    def metrics(ranked):
        return M.location_retrieval_metrics(ranked, q_rows, q_tags, truth, lat, lon, v, places)

    ref = metrics(exact)
    rows = [["exact", f"{len(truth)}", "100.0", *(f"{ref[n]:.2f}" for n in names), f"{t_exact:.2f}", "1.0"]]
    for k_images, k_nearby in settings:
        s = RerankSettings(tags=1, images=k_images, nearby=k_nearby, index=index)

        def run():
            ann, spatial = build_gallery_indexes(split["embedding"], lat, lon, s)
            cand = retrieval_candidates(ann, spatial, tags.numpy(), q_tags, lat[q_rows], lon[q_rows], s)
            with torch.no_grad():
                return reranked_images(net, images, qt, loc[q_rows], tags, cand, 10, pairs, weight)
        ranked, t = timed(run, 3)
        got = metrics(ranked)
        rows.append([f"{k_images}+{k_nearby}", f"{k_images + k_nearby}", f"{recall_of(exact, ranked):.1f}",
                     *(f"{got[n] - ref[n]:+.2f}" for n in names), f"{t:.2f}", f"{t_exact / t:.1f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", type=Path, help="also write the tables into this Markdown page's block rerank-sweep")
    ap.add_argument("overrides", nargs="*", help="key=value settings of conf/serving.yaml")
    ap.add_argument("--tags", type=int, nargs="+", default=[50, 75, 100, 200])
    ap.add_argument("--images", nargs="+", default=["40:20", "50:25", "100:50", "200:100"],
                    help="retrieval candidates as IMAGES:NEARBY")
    ap.add_argument("--place-tags", type=int, default=25,
                    help="also rerank with this many place tags added (PlacePrior over the training split; 0: no)")
    ap.add_argument("--index", default="auto")
    ap.add_argument("--pairs", type=int, default=262144)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_config("serving", args.overrides)
    tagging, retrieval = Path(cfg.gallery.tagger), Path(cfg.gallery.retriever)
    for key, path in (("gallery.tagger", tagging), ("gallery.retriever", retrieval),
                      ("gallery.embeddings_dir", Path(cfg.gallery.embeddings_dir))):
        if not path.exists():
            sys.exit(f"{key}={path}: missing; run `make demo` first (or set {key}=...)")
    dm = LocSensDataModule(str(cfg.gallery.embeddings_dir))
    split = dm.split_arrays("test")
    tags = torch.tensor(dm.tag_embeddings())
    places = place_mask(cfg.paths.shards_dir)
    lines = [f"On the test split ({len(split['truth'])} images, {tags.shape[0]} tags, {int(places.sum())} place names); "
             "exact rows show absolute metrics, rerank rows the change from exact; times are medians of 3 and "
             "include the shortlists and the indexes.", ""]
    net, weight = load(tagging)
    head = ["mode", "K", "recall@10 %"] + [f"dA@{k}{s}" for s in ("", " np") for k in KS] + ["seconds", "speed-up"]
    lines += [f"Tagging ({tagging.parent.parent.name}): K tags shortlisted by MCC cosine, reranked by LocSens", ""]
    train = dm.split_arrays("train")
    prior = PlacePrior(train["latitude"], train["longitude"], train["truth"], tags.shape[0])
    lines += [table(head, tagging_rows(net, weight, split, tags, places, args.tags, args.pairs, prior,
                                       args.place_tags)), ""]
    net, weight = load(retrieval)
    settings = [tuple(int(x) for x in s.split(":")) for s in args.images]
    head = ["candidates (tag+near)", "C", "recall@10 %"] + [f"dP@10 {g}" for g in [*M.GRANULARITIES_KM, "agn"]] \
        + ["seconds", "speed-up"]
    lines += [f"Retrieval ({retrieval.parent.parent.name}): {args.index} index + ball tree, reranked by LocSens", "",
              table(head, retrieval_rows(net, weight, split, tags, places, settings, args.index, args.pairs, args.seed))]
    print("\n".join(lines))
    if args.doc:
        write_block(args.doc, "rerank-sweep", "\n".join(lines), "python bench/rerank_sweep.py --doc " + str(args.doc))


if __name__ == "__main__":
    main()
