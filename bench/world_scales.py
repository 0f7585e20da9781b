"""How fine the location must be resolved on a dataset, against the sigma schedule's scales: photos
per town, the distance from a town to its nearest other town (by great-circle distance) and from
a photo to its town's centre, in LocSens's normalised coordinates ((lat+90)/180, (lon+180)/360) and in kilometres.

    python bench/world_scales.py [--doc docs/findings.md]

Reads the shards (every split) and the synthetic world's truth per photo (its town); a town's
centre is the median of its photos' coordinates. A sigma stage draws training locations with that
standard deviation in normalised units, so a stage resolves places about sigma apart at best.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.config import compose_config  # noqa: E402
from common.contract import shard_root  # noqa: E402
from common.markdown import table, write_block  # noqa: E402
from common.metrics import haversine_km  # noqa: E402
from training.index.spatial import SpatialIndex  # noqa: E402
from training.models.locations import normalise_location  # noqa: E402
from training.models.schedules import PAPER_SIGMA_SCHEDULE  # noqa: E402

KM_PER_DEGREE = 111.2


def _normalised(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """LocSens's location input for these coordinates."""
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
    return normalise_location(as_tensor(lat), as_tensor(lon)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=ROOT / "data" / "sample" / "world_photos.parquet")
    ap.add_argument("--doc", type=Path, help="also write the table into this page's block world-scales")
    args = ap.parse_args()
    shards = shard_root(compose_config("train").paths.shards_dir)
    photos = pd.concat([ds.dataset(shards / split, format="parquet")
                        .to_table(columns=["photo_id", "latitude", "longitude"]).to_pandas()
                        for split in ("train", "val", "test")])
    towns = pd.read_parquet(args.world, columns=["photo_id", "town"])
    photos["photo_id"], towns["photo_id"] = photos["photo_id"].astype(str), towns["photo_id"].astype(str)
    photos = photos.merge(towns, on="photo_id")
    centre = photos.groupby("town")[["latitude", "longitude"]].median()
    lat, lon = centre.latitude.to_numpy(), centre.longitude.to_numpy()
    ids, km = SpatialIndex(lat, lon).nearest(lat, lon, 2)       # the town itself, then its nearest other
    nearest, town_km = ids[:, 1], km[:, 1]
    x = _normalised(lat, lon)
    town_norm = np.linalg.norm(x - x[nearest], axis=1)
    own = centre.loc[photos.town]
    photo_norm = np.linalg.norm(_normalised(photos.latitude.to_numpy(), photos.longitude.to_numpy())
                                - _normalised(own.latitude.to_numpy(), own.longitude.to_numpy()), axis=1)
    photo_km = haversine_km(photos.latitude, photos.longitude, own.latitude.to_numpy(), own.longitude.to_numpy())
    per_town = photos.groupby("town").size()
    q = lambda v: " / ".join(f"{np.percentile(v, p):.4g}" for p in (10, 50, 90))
    rows = [["photos per town", q(per_town), "", ""],
            ["nearest other town", "", q(town_norm), q(town_km)],
            ["photo to its town's centre", "", q(photo_norm), q(photo_km)]]
    for sigma, _ in PAPER_SIGMA_SCHEDULE:
        if sigma > 0:
            rows.append([f"sigma = {sigma:g} (one standard deviation)", "", f"{sigma:g}",
                         f"{sigma * 180 * KM_PER_DEGREE:.0f} north-south, {sigma * 360 * KM_PER_DEGREE:.0f} "
                         "east-west at the equator"])
    text = (f"{len(photos):,} photos in {len(centre):,} towns; 10th / 50th / 90th percentiles.\n\n"
            + table(["", "count", "normalised units", "km"], rows))
    print(text)
    if args.doc:
        write_block(args.doc, "world-scales", text, " ".join(["python bench/world_scales.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
