"""Checks of a run's input files before training starts, so that a bad file stops the run with one
line naming it, not with a decoder traceback hours into an epoch.

Only Parquet footers are read (no data pages): a truncated file (its footer is at the end), a file
with another schema, a file the manifest lists but the disk lacks, or one whose rows differ from
what the manifest recorded. With ``data.on_bad_file=skip`` such files are left out of the run
instead and reported (training.run counts them in MLflow). An embeddings export made on another
vocabulary than the run's shards is never skippable: every tag index would mean another tag.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from training.errors import SetupError
from training.ranks import Ranks

log = logging.getLogger(__name__)

ON_BAD_FILE = ("error", "skip")
_REEXPORT = "re-export MCC trained on these shards, or set data.shards_dir to the shards it was trained on"


@dataclass(frozen=True)
class BadFile:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def parquet_problem(path: Path, columns: pa.Schema, rows: Optional[int] = None) -> Optional[str]:
    """What is wrong with one listed Parquet file (None when nothing is): it must exist, have a
    readable footer, hold ``columns`` with their types, and (when given) ``rows`` rows."""
    if not path.exists():
        return "listed in the manifest but missing"
    try:
        meta = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        return f"not a readable Parquet file ({str(exc).splitlines()[0][:160]}; truncated or overwritten?)"
    schema = meta.schema_arrow
    for field in columns:
        if field.name not in schema.names:
            return f"has no column {field.name!r} (its columns: {', '.join(schema.names)})"
        if not schema.field(field.name).type.equals(field.type):
            return f"column {field.name!r} is {schema.field(field.name).type}, expected {field.type}"
    if rows is not None and meta.metadata.num_rows != rows:
        return f"holds {meta.metadata.num_rows:,} rows, the manifest says {rows:,}"
    return None


def resolve(bad: Sequence[BadFile], on_bad_file: str, listed: int, what: str) -> None:
    """Stop on the first bad file (``error``), or warn and go on without them (``skip``)."""
    if on_bad_file not in ON_BAD_FILE:
        raise SetupError(f"data.on_bad_file={on_bad_file!r}: expected one of {', '.join(ON_BAD_FILE)}")
    if not bad:
        return
    if on_bad_file == "error":
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise SetupError(f"{bad[0]}{more}; fix or rewrite the {what}, or set data.on_bad_file=skip to train without "
                         f"{'it' if len(bad) == 1 else 'them'}")
    if len(bad) == listed:
        raise SetupError(f"every one of the {listed} {what} files is bad, e.g. {bad[0]}")
    for b in bad:
        log.warning("data.on_bad_file=skip: leaving out %s", b)


def same_vocabulary(export_tags: Sequence[str], vocab: Mapping[int, str], vocab_size: int, export: Path,
                    shards: Path) -> None:
    """The export's tag table must be the shards' vocabulary, index for index."""
    if len(export_tags) != vocab_size:
        raise SetupError(f"{export}: {len(export_tags):,} tags, but the vocabulary of {shards} has {vocab_size:,}: "
                         f"{_REEXPORT}")
    for i, tag in enumerate(export_tags):
        if vocab.get(i, "") != tag:
            raise SetupError(
                f"{export}: its tags are not the vocabulary of {shards} (index {i} is {tag!r} in the export, "
                f"{vocab.get(i, '')!r} in the shards): {_REEXPORT}")


def agree_on_files(listed: Sequence[tuple[str, int]], bad: Mapping[str, str], on_bad_file: str, what: str,
                   root: Path, ranks: Ranks) -> dict[str, BadFile]:
    """The run's input files made one decision for every rank (a collective; every rank calls it).

    ``listed`` are this rank's files (path under ``root``, rows), ``bad`` those it found bad (path
    under ``root`` -> problem): paths under the root, since each node may mount it elsewhere. Rank
    0's file list is the run's: a rank that lists other files (a manifest rewritten while the run
    started, another folder on one node) stops every rank with the same line. A file found bad on
    any rank is bad on all: ``on_bad_file=error`` stops every rank naming it, ``skip`` leaves it out
    everywhere, so that the ranks' epoch plans stay the same (one rank planning without a file,
    the others with it, would wait forever in the first collective). Returns the bad files."""
    first = ranks.broadcast(list(listed))
    same = ranks.all_gather(list(listed) == first)
    if not all(same):
        others = [str(r) for r, ok in enumerate(same) if not ok]
        raise SetupError(f"{what}: rank(s) {', '.join(others)} list other files than rank 0 ({len(first)} files): "
                         "every rank must read the same manifest; is the folder shared, and was it rewritten while "
                         "the run started?")
    found: dict[str, tuple[str, list[int]]] = {}
    for rank, part in enumerate(ranks.all_gather(sorted(bad.items()))):
        for path, problem in part:
            found.setdefault(path, (problem, []))[1].append(rank)
    merged = {path: BadFile(str(root / path), problem if len(seen) == ranks.world else
                            f"{problem} (on rank {', '.join(map(str, seen))} of {ranks.world} only)")
              for path, (problem, seen) in sorted(found.items())}
    resolve(list(merged.values()), on_bad_file, len(first), what)
    return merged


class CheckedFiles:
    """The input-file decision the data modules share: made at once in one process, or, in a run of
    several (``defer``), by the ranks together in :meth:`setup` once they have met. A module gives
    its files' root (``files_root``), a name for messages (``files_what``) and ``_leave_out``."""

    _listed: Sequence[tuple[str, int]] = ()
    _deferred: Optional[dict[str, str]] = None     # path under the root -> problem
    bad_files: Sequence[BadFile] = ()

    files_root: Path
    files_what: str
    _leave_out: Callable[[Mapping[str, BadFile]], None]    # the module's manifest without those files

    def _decide(self, listed: Sequence[tuple[str, int]], bad: dict[str, BadFile], defer: bool) -> list[BadFile]:
        """Stop, or leave ``bad`` out (paths under the root), now; or with ``defer``, at setup."""
        self._listed = list(listed)
        if defer:
            self._deferred = {path: b.problem for path, b in bad.items()}
            return list(bad.values())
        resolve(list(bad.values()), self.hparams.on_bad_file, len(listed), self.files_what)
        self.bad_files = list(bad.values())
        self._leave_out(bad)
        return list(self.bad_files)

    def setup(self, stage: str) -> None:
        """With the check deferred: every rank's bad files, one decision (stop, or leave them out everywhere)."""
        if self._deferred is None:
            return
        bad = agree_on_files(self._listed, self._deferred, self.hparams.on_bad_file, self.files_what,
                             self.files_root, Ranks.current())
        self.bad_files = list(bad.values())
        self._leave_out(bad)
        self._deferred = None
