"""Throughput of the synthetic-world generator: metadata lines/s and images/s.

Figures are printed next to baselines measured in the same run, as ratios:
- metadata: the vectorised writer against a per-row Python writer (f-strings, hashlib, quote_plus
  per line) producing lines of the same shape, the obvious way to write such a generator;
- images: two render processes against one.

    python bench/synth_throughput.py [--lines 1000000] [--big 5000000] [--images 5000]
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_plus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synth.generate import SynthParams, generate  # noqa: E402
from pipeline.synth.geography import load_geography  # noqa: E402
from pipeline.yfcc import unpadded_hex  # noqa: E402


def per_row_baseline(n: int, out: Path) -> float:
    """Lines/s of a plain Python loop writing comparable 25-column lines."""
    towns = load_geography().towns[["name", "lat", "lon"]].to_numpy()
    rnd = random.Random(0)
    t0 = time.perf_counter()
    with open(out, "w") as fh:
        for i in range(n):
            name, lat, lon = towns[rnd.randrange(len(towns))]
            pid = 1_000_000 + i * 2600
            secret = "%010x" % rnd.getrandbits(40)
            url = f"http://farm{rnd.randint(1, 9)}.staticflickr.com/{rnd.randint(1, 9999)}/{pid}_{secret}.jpg"
            h = unpadded_hex(hashlib.md5(url.encode()).digest())
            tags = ",".join(sorted({quote_plus(name.lower()), "beach", "sand", "travel"}))
            fields = [str(i), str(pid), h, "1234@N00", "nick", "2010-01-01 10:00:00.0", "1262340000",
                      "Canon+EOS", quote_plus(f"Beach in {name}"), "", tags, "",
                      f"{lon + rnd.gauss(0, 0.02):.6f}", f"{lat + rnd.gauss(0, 0.02):.6f}", "16",
                      f"http://www.flickr.com/photos/1234@N00/{pid}/", url, "Attribution License",
                      "http://creativecommons.org/licenses/by/2.0/", "1", "1", secret, secret, "jpg", "0"]
            fh.write("\t".join(fields) + "\n")
    return n / (time.perf_counter() - t0)


def timed_generate(params: SynthParams) -> tuple[float, dict]:
    t0 = time.perf_counter()
    counts = generate(params, progress=None)
    return time.perf_counter() - t0, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--big", type=int, default=5_000_000, help="0 to skip the big metadata run")
    ap.add_argument("--baseline-lines", type=int, default=200_000)
    ap.add_argument("--images", type=int, default=5_000)
    args = ap.parse_args()
    load_geography()   # warm the town table so no run pays for it
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = per_row_baseline(args.baseline_lines, tmp / "baseline.tsv")
        print(f"per-row Python baseline:      {base:12,.0f} lines/s ({args.baseline_lines:,} lines; simpler "
              f"lines than the world's: 4 fixed tags, no places file, no truth table)")
        for n in [args.lines] + ([args.big] if args.big else []):
            secs, counts = timed_generate(SynthParams(out=tmp / f"meta{n}", photos=n, seed=1, images=False))
            rate = n / secs
            print(f"vectorised metadata:          {rate:12,.0f} lines/s ({n:,} lines, {secs:.1f} s, "
                  f"incl. world setup)  = {rate / base:.1f}x baseline")
        one, c1 = timed_generate(SynthParams(out=tmp / "img1", photos=args.images, seed=1, workers=1))
        two, c2 = timed_generate(SynthParams(out=tmp / "img2", photos=args.images, seed=1, workers=2))
        print(f"images, 1 process:            {c1['images'] / one:12,.0f} images/s ({c1['images']:,} images, "
              f"128 px, metadata included)")
        print(f"images, 2 processes:          {c2['images'] / two:12,.0f} images/s  = {one / two:.2f}x 1 process")


if __name__ == "__main__":
    main()
