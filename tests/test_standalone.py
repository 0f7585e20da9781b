"""The repository stands alone: a user's clone has no team folder beside it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A path into the sibling folder the team keeps outside the repository, however it is spelt.
OUTSIDE = re.compile(r"\.\./" + "shared" + r"|LOCSENS_" + "SHARED")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_tracked_file_refers_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line)]
    assert not offenders, f"tracked files point outside the repository: {offenders}"


def test_the_real_sample_lines_are_in_the_repository(real_head_path):
    lines = real_head_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000 and all(len(l.split("\t")) == 25 for l in lines)
    assert ROOT in real_head_path.resolve().parents
