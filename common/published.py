"""Publishing an output without renames: versions side by side, and a pointer written last.

On S3 or GCS a "rename" is a copy and a delete, neither atomic nor cheap, so an output is never
moved. Each run writes its output ``T`` into a version folder of its own, ``T/v<UTC time>-<id>/``,
and checks it; only then does it publish it by writing one small pointer file,
``T/_published-<n>.json``, naming that version. Pointers are never overwritten: each publish
writes the next number with a create that fails if the name exists. Readers take the highest
number whose pointer parses and whose version folder exists, so a pointer torn by a kill is never
followed, and the previous one still is. After publishing, older pointers and versions are
deleted; a later run deletes what an interrupted one left (:func:`leftovers`), never the
published version.

This module is the protocol's pure part (names and choices) and its reader for local paths
(:func:`resolve`, used by training and serving); ``pipeline/io.py`` does the same through
Hadoop's FileSystem for the Spark jobs. It imports nothing beyond the standard library.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

POINTER_PREFIX = "_published-"
POINTER_SUFFIX = ".json"
_POINTER = re.compile(r"^_published-(\d{10})\.json$")
_VERSION = re.compile(r"^v\d{8}T\d{6}Z-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Pointer:
    """One publish of an output: its number, the version folder it names and the run that wrote
    it (shared by every output that run published, so readers can tell a set apart)."""

    seq: int
    version: str
    run: str
    job: str = ""
    published: str = ""

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "seq"}, sort_keys=True) + "\n"


def pointer_name(seq: int) -> str:
    return f"{POINTER_PREFIX}{seq:010d}{POINTER_SUFFIX}"


def pointer_seq(name: str) -> Optional[int]:
    m = _POINTER.match(name)
    return int(m.group(1)) if m else None


def is_version(name: str) -> bool:
    return bool(_VERSION.match(name))


def new_version(now: Optional[float] = None) -> str:
    """A version folder name: UTC time first, so versions list in the order they were made."""
    return time.strftime("v%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + uuid.uuid4().hex[:8]


def run_of(version: str) -> str:
    return version.rsplit("-", 1)[-1]


def parse_pointer(seq: int, text: bytes | str) -> Optional[Pointer]:
    """The pointer in ``text``, or None when it is torn or not one of ours."""
    try:
        d = json.loads(text)
        version = d["version"]
        if not isinstance(version, str) or not is_version(version):
            return None
        return Pointer(seq, version, str(d.get("run", run_of(version))), str(d.get("job", "")),
                       str(d.get("published", "")))
    except (ValueError, KeyError, TypeError):
        return None


def choose(names: Iterable[str], read: Callable[[str], bytes]) -> Optional[Pointer]:
    """The published pointer among the entries ``names`` of an output folder: the highest-numbered
    one that parses (``read(name)`` gives its bytes) and names a version folder that exists."""
    names = set(names)
    for seq in sorted((s for n in names if (s := pointer_seq(n)) is not None), reverse=True):
        pointer = parse_pointer(seq, read(pointer_name(seq)))
        if pointer is not None and pointer.version in names:
            return pointer
    return None


def next_seq(names: Iterable[str]) -> int:
    """The number of the next pointer: above every pointer present, torn ones included."""
    return max((s for n in names if (s := pointer_seq(n)) is not None), default=0) + 1


def leftovers(names: Iterable[str], published: Optional[Pointer], keep: Iterable[str] = ()) -> list[str]:
    """Entries of an output folder to delete: pointers other than the published one and version
    folders other than the published one and ``keep`` (a version being resumed). Anything else
    is not the protocol's and stays."""
    keep = set(keep) | ({published.version} if published else set())
    return sorted(n for n in names if (pointer_seq(n) is not None and (published is None or pointer_seq(n) != published.seq))
                  or (is_version(n) and n not in keep))


def unpublished_versions(names: Iterable[str], published: Optional[Pointer]) -> list[str]:
    """Version folders not published, newest first: what an interrupted run left."""
    return sorted((n for n in names if is_version(n) and (published is None or n != published.version)), reverse=True)


def published_pointer(path: str | os.PathLike) -> Optional[Pointer]:
    """The published pointer of a local output folder, or None (missing, or never published)."""
    folder = Path(path)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return choose(names, lambda name: (folder / name).read_bytes())


def resolve(path: str | os.PathLike) -> Path:
    """The published version folder of the local output ``path``; an error naming the path when
    there is none."""
    pointer = published_pointer(path)
    if pointer is None:
        raise FileNotFoundError(f"{path}: no published version (no readable {POINTER_PREFIX}*{POINTER_SUFFIX} "
                                f"naming a version folder there); run the job that writes it")
    return Path(path) / pointer.version
