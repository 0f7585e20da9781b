"""The documentation stays in step with the code: the README is a front door of at most 250 lines,
and every file, module, make target and figure block the README and docs/ name exists."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from common.markdown import read_block

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _page_ids() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in PAGES]


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    assert "make demo" in (ROOT / "README.md").read_text() and "make test" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_links_and_paths_exist(page):
    text = page.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):        # Markdown links
        if "://" not in target and not (page.parent / target).exists():
            missing.append(target)
    for path in re.findall(r"`((?:training|serving|pipeline|common|jobs|bench|tests|conf)/[\w./-]+)`", text):
        if not (ROOT / path.rstrip("/")).exists():
            missing.append(path)
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_commands_name_modules_and_targets_that_exist(page):
    text = page.read_text()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    unknown = [m for m in re.findall(r"python -m ([\w.]+)", text) if importlib.util.find_spec(m) is None]
    unknown += [t for t in re.findall(r"(?:`|^)make ([a-z][\w-]+)", text, flags=re.M) if t not in targets]
    assert unknown == []


def test_figure_blocks_are_written_by_the_commands_that_measure_them():
    """Every block a page marks for figures is filled by a command that knows its name."""
    sources = "\n".join(p.read_text() for p in [*ROOT.glob("bench/*.py"), ROOT / "tests" / "conftest.py",
                                                *ROOT.glob("training/report/*.py")])
    for page in PAGES:
        for name in re.findall(r"<!-- figures:([\w-]+) -->", page.read_text()):
            assert f'"{name}"' in sources, f"{page.name}: no command writes block {name}"
            assert "typed" not in read_block(page, name)
