"""How well each model names the place: tagging accuracy over place-name tags alone, LocSens and MCC
against a town-frequency prior (the most frequent place tags among the training photos nearest
the test photo, :class:`training.evaluate.rerank.PlacePrior`).

    python bench/place_tags.py [--grid outputs/grid] [--seeds 1 2] [--variants base] [--photos 100] [--doc PAGE]

Place names are about three tags in four of the synthetic world's photos, as they are common on
Flickr; the town-frequency baseline wins A@1 by them. This scores every model on the test images
that carry a place-name tag, ranking place-name tags only (every other tag masked), so it shows
whether a location model learnt the place from the location as a frequency prior does. Reads the
runs of ``bench/locsens_grid.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import metrics as M  # noqa: E402
from common.config import compose_config  # noqa: E402
from common.markdown import table, write_block  # noqa: E402
from training.data.embeddings import LocSensDataModule  # noqa: E402
from training.data.shards import place_mask  # noqa: E402
from training.evaluate.locsens import tag_images_masked  # noqa: E402
from training.evaluate.rerank import PlacePrior  # noqa: E402
from training.evaluate.topk import top_k  # noqa: E402
from training.models.locations import normalise_location  # noqa: E402
from training.models.locsens import LocSens  # noqa: E402

KS = [1, 10]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=ROOT / "outputs" / "grid")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--variants", nargs="+", default=["base"])
    ap.add_argument("--photos", type=int, default=100, help="training photos nearest a test photo (the prior)")
    ap.add_argument("--doc", type=Path, help="also write the table into this page's block place-tags")
    args = ap.parse_args()
    torch.set_num_threads(2)
    shards = compose_config("train").paths.shards_dir
    places = place_mask(shards)
    others = ~places
    rows = []
    for seed in args.seeds:
        dm = LocSensDataModule(str(args.grid / f"mcc_s{seed}" / "embeddings"))
        test, train = dm.split_arrays("test"), dm.split_arrays("train")
        truth = test["truth"].without(others)              # place-name tags only
        carrying = np.flatnonzero(truth.counts > 0)
        truth = truth.take(carrying)
        lat, lon = test["latitude"][carrying], test["longitude"][carrying]
        tags = torch.tensor(dm.tag_embeddings())
        images = torch.tensor(np.asarray(test["embedding"])[carrying])
        v = tags.shape[0]

        def score(name: str, ranked: np.ndarray) -> None:
            acc = M.accuracy_at_k(ranked, truth, v, KS)
            rows.append([name, str(seed), str(len(carrying))] + [f"{acc[k]:.2f}" for k in KS])

        prior = PlacePrior(train["latitude"], train["longitude"], train["truth"], v)
        score("town-frequency prior", prior.top_tags(lat, lon, args.photos, max(KS), exclude=others))
        exclude = torch.as_tensor(others)
        unit = torch.nn.functional.normalize
        score("MCC", top_k(unit(images, dim=1), unit(tags, dim=1), max(KS), 1024, exclude=exclude))
        loc = normalise_location(torch.tensor(lat).float(), torch.tensor(lon).float())
        for variant in args.variants:
            checkpoint = args.grid / f"{variant}_s{seed}" / "checkpoints" / "best.ckpt"
            model = LocSens.load_from_checkpoint(str(checkpoint), map_location="cpu", optimizer=None,
                                                 weights_only=True).eval()
            weight = 0.0 if model.variant == "zeroed" else None
            ranked = tag_images_masked(model.net, images, loc, tags, max(KS), 1 << 18, [exclude], weight)[0]
            score(f"LocSens {variant}", ranked)
    text = table(["model", "seed", "test photos with a place tag", *(f"place A@{k}" for k in KS)], rows)
    print(text)
    if args.doc:
        write_block(args.doc, "place-tags", text, " ".join(["python bench/place_tags.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
