"""The size on disk of each role's install (``pip install '.[<role>]'``), from the distributions
installed in this environment (``make install`` holds every role): each role's requirements are
followed through the installed packages' own requirements, and their files summed.

    python bench/install_sizes.py [--doc README.md]

A role's figure is what pip would put in a fresh environment of this Python (this environment's
versions, which ``constraints.txt`` pins), not counting pip and setuptools themselves.
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.markdown import table as md_table  # noqa: E402
from common.markdown import write_block  # noqa: E402

PROJECT = "locsens"
ROLES = {
    "pipeline": "the Spark jobs' driver (edge node, cluster driver)",
    "train": "training, evaluation, the search index, reports",
    "serve": "the model server and web page (with training's models)",
}
#: The roles' size without these: every environment has them before anything is installed.
BASE = {"pip", "setuptools", "wheel"}


def dist_size(dist: metadata.Distribution) -> int:
    """Bytes of a distribution's installed files (as its RECORD lists them)."""
    total = 0
    for f in dist.files or []:
        if f.size is not None:
            total += f.size
        else:
            p = Path(dist.locate_file(f))
            total += p.stat().st_size if p.is_file() else 0
    return total


def closure(extras: set[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``pip install '.[extras]'`` brings in (the project excluded)."""
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(PROJECT, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here: run this in the environment make install builds") from None
        if name != PROJECT:
            found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {k: v for k, v in found.items() if k not in BASE}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=None, help="write the table into this page's install-sizes block")
    args = p.parse_args()
    rows = []
    for role, what in ROLES.items():
        dists = closure({role})
        size = sum(dist_size(d) for d in dists.values())
        biggest = sorted(dists, key=lambda n: -dist_size(dists[n]))[:3]
        rows.append([f"`pip install '.[{role}]'`", what, f"{size / 2**30:.1f} GiB", str(len(dists)),
                     ", ".join(biggest)])
    text = md_table(["install", "for", "size", "packages", "largest"], rows)
    print(text)
    if args.doc:
        write_block(args.doc, "install-sizes", text, " ".join(["python bench/install_sizes.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
