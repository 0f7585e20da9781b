"""Resuming shard_dataset: which shard files a killed run already finished, checked before reuse.

Writing shards is the pipeline's longest stage. Each shard task writes its file in place in the
unpublished version folder and, once it is closed, a small marker
(``_progress/<split>/part-NNNNN.json``) holding a digest of everything that decides the file's bytes (the settings and every input row with its image
locator), the file's size and row groups, and the task's records (the file and its rejected rows).
A rerun in the same version folder skips a shard whose marker has the same digest and whose file
still has that size and those row groups, and replays the recorded records, so the manifest and
the rejects come out as from an uninterrupted run. Anything else is written again.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence

import pyarrow.fs as pafs
import pyarrow.parquet as pq

PROGRESS_DIR = "_progress"


def digest(fingerprint: str, rows: Sequence[dict[str, Any]]) -> str:
    """sha256 of the settings and the shard's input rows (all columns, in order)."""
    h = hashlib.sha256(fingerprint.encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


class ShardProgress:
    """The markers of one staging folder (``base``), opened through ``fs`` on an executor."""

    def __init__(self, fs: pafs.FileSystem, base: str):
        self.fs, self.base = fs, base

    def _marker(self, rel: str) -> str:
        return f"{self.base}/{PROGRESS_DIR}/{rel.removesuffix('.parquet')}.json"

    def completed(self, rel: str, want: str) -> Optional[list[dict]]:
        """The recorded records of shard file ``rel`` when it is complete and verified, else None."""
        try:
            with self.fs.open_input_stream(self._marker(rel)) as fh:
                marker = json.loads(fh.readall())
            if marker.get("digest") != want:
                return None
            if marker["row_groups"]:     # else every row was rejected: there is no file
                path = f"{self.base}/{rel}"
                if self.fs.get_file_info(path).size != marker["size"]:
                    return None
                with self.fs.open_input_file(path) as fh:
                    meta = pq.ParquetFile(fh).metadata
                if [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] != marker["row_groups"]:
                    return None
            return marker["records"]
        except (OSError, ValueError, KeyError, TypeError):
            return None   # no marker, a torn one, or a damaged file: write it again

    def mark(self, rel: str, want: str, records: list[dict], row_groups: list[int]) -> None:
        """Record shard ``rel`` as finished, after its file is complete: one small write in place (a
        PUT on object stores; a marker torn by a kill does not parse, and the shard is written again)."""
        size = self.fs.get_file_info(f"{self.base}/{rel}").size if row_groups else 0
        marker = self._marker(rel)
        self.fs.create_dir(marker.rpartition("/")[0], recursive=True)
        with self.fs.open_output_stream(marker) as fh:
            fh.write(json.dumps({"digest": want, "size": size, "row_groups": row_groups,
                                 "records": records}).encode())
