"""Helpers the Spark job tests share: a job's config over a test folder, output digests to compare
reruns, leftovers of publishing, and a conservation check that always refuses."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from common import published
from common.contract import shard_root
from pipeline.config import PipelineError, load_config


def job_config(tmp_path: Path, raw: Path, *extra: str):
    return load_config([f"paths.root_dir={tmp_path}", f"paths.raw_dir={raw}",
                        f"paths.mlflow_tracking_uri=sqlite:///{tmp_path}/mlruns.db",
                        "spark.shuffle_partitions=2", *extra])


def digests(path: str | Path) -> dict[str, str]:
    """MD5 of every file of an output (a file, a folder, or the version a job published there),
    by path relative to the output's parent: to compare outputs of different runs."""
    path = Path(path)
    root = published.resolve(path) if published.published_pointer(path) else path
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(Path(path.name) / f.relative_to(root)) if root != path else str(f.relative_to(path.parent)):
            hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def output_path(path: str | Path) -> Path:
    """Where to read an output a job published at ``path``: its published version folder."""
    return published.resolve(path)


def shard_digests(shards: str | Path) -> dict[str, str]:
    """:func:`digests` of a shard directory, its manifest compared without the MLflow run that wrote
    it (``extra.mlflow_run``, different in every run): equal for runs that wrote the same shards."""
    out = {k.split("/", 1)[1]: v for k, v in digests(shards).items() if not k.endswith("/manifest.json")}
    manifest = json.loads((shard_root(shards) / "manifest.json").read_text())
    assert manifest["extra"].pop("mlflow_run", {}) is not None
    out["manifest.json"] = hashlib.md5(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return out


def leftovers(folder: str | Path) -> list[str]:
    """What publishing left behind in ``folder`` and the output folders directly in it: hidden
    temps, and pointers or versions other than the published ones (there should be none)."""
    folder, out = Path(folder), []
    for d in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
        names = os.listdir(d)
        out += [f"{d.name}/{n}" for n in names if n.startswith(".")]
        if any(published.pointer_seq(n) is not None or published.is_version(n) for n in names):
            out += [f"{d.name}/{n}" for n in published.leftovers(names, published.published_pointer(d))]
    return sorted(out)


def refuse(stage_name: str, n_in: int, parts) -> None:
    """A conservation check that always fails, as a real one does when counts differ."""
    raise PipelineError(f"{stage_name}: refused ({n_in} in, {dict(parts)} out)")
