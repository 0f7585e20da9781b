"""``python -m pipeline.synth --out DIR --photos N --seed S``: write a synthetic YFCC100M world."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .generate import SynthError, SynthParams, generate, is_complete


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.synth", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--photos", type=int, required=True, help="number of dataset lines (photos and videos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", type=int, default=25, help="25 (2016 release) or 23 (2014 / AWS copy, + yfcc100m_hash)")
    p.add_argument("--no-images", dest="images", action="store_false", help="metadata only")
    p.add_argument("--compress", default="none", help="none or bz2")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels")
    p.add_argument("--workers", type=int, default=2, help="processes that render images")
    p.add_argument("--vocab", type=Path, default=None,
                   help="frequency-ordered word list for noise tags (default: the authors' released vocabulary)")
    p.add_argument("--skip-existing", action="store_true",
                   help="do nothing when OUT already holds a complete world with the same parameters")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    params = SynthParams(out=args.out, photos=args.photos, seed=args.seed, layout=args.layout,
                         images=args.images, compress=args.compress, image_size=args.image_size,
                         workers=args.workers, vocab=args.vocab)
    try:
        params.validate()
        if args.skip_existing and is_complete(args.out, params):
            print(f"synth: {args.out} already holds this world (world.json matches); skipping", file=sys.stderr)
            return 0
        counts = generate(params)
    except SynthError as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synth: interrupted; the output folder is incomplete (no world.json)", file=sys.stderr)
        return 130
    print(f"synth: wrote {counts['lines']:,} lines, {counts['images']:,} images to {args.out} "
          f"in {counts['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
