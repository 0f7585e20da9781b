"""Markdown tables, and figures written into Markdown pages by the commands that measure them,
never typed by hand.

A page marks where a command's figures go::

    <!-- figures:serve-load -->
    (replaced by the command on every run)
    <!-- /figures:serve-load -->

and the command (a benchmark's ``--doc docs/serving.md``, ``make readme-results``) replaces what is
between the markers with its table and a line saying which command wrote it, when, and on what
machine. The rest of the page is left as it is.
"""
from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of text cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"


def provenance(command: str) -> str:
    """Which command wrote a block, when, and on what machine."""
    when = time.strftime("%Y-%m-%d", time.gmtime())
    return f"_Written by `{command}` on {when} ({os.cpu_count()} CPU cores, {platform.machine()})._"


def write_block(path: str | os.PathLike, name: str, body: str, command: str) -> Path:
    """Replace block ``name`` of the Markdown page ``path`` with ``body`` and its provenance line.
    A page without the block's markers is an error naming the markers to add."""
    path = Path(path)
    begin, end = _markers(name)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{path}: no block {name!r} to write into (add the lines {begin} and {end})")
    block = f"{begin}\n{body.rstrip()}\n\n{provenance(command)}\n{end}"
    path.write_text(pattern.sub(lambda _: block, text, count=1), encoding="utf-8")
    return path


def read_block(path: str | os.PathLike, name: str) -> str:
    """What block ``name`` of a page holds (without its markers); "" when it has none."""
    begin, end = _markers(name)
    match = re.search(re.escape(begin) + r"\n?(.*?)\n?" + re.escape(end), Path(path).read_text(encoding="utf-8"),
                      re.DOTALL)
    return match.group(1) if match else ""
