"""Helpers the Spark job tests share: a job's config over a test folder, output digests to compare
reruns, leftovers of staged publishing, and a conservation check that always refuses."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import PipelineError, load_config


def job_config(tmp_path: Path, raw: Path, *extra: str):
    return load_config([f"paths.root_dir={tmp_path}", f"paths.raw_dir={raw}",
                        f"paths.mlflow_tracking_uri=sqlite:///{tmp_path}/mlruns.db",
                        "spark.shuffle_partitions=2", *extra])


def digests(path: str | Path) -> dict[str, str]:
    """MD5 of every file of an output (a file or a folder), by relative path: to compare outputs."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.relative_to(path.parent)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def shard_digests(shards: str | Path) -> dict[str, str]:
    """:func:`digests` of a shard directory, its manifest compared without the MLflow run that wrote
    it (``extra.mlflow_run``, different in every run): equal for runs that wrote the same shards."""
    out = {k.split("/", 1)[1]: v for k, v in digests(shards).items() if not k.endswith("/manifest.json")}
    manifest = json.loads((Path(shards) / "manifest.json").read_text())
    assert manifest["extra"].pop("mlflow_run", {}) is not None
    out["manifest.json"] = hashlib.md5(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return out


def hidden_entries(folder: str | Path) -> list[str]:
    """Temp or set-aside siblings (hidden names) left in an output folder."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def refuse(stage_name: str, n_in: int, parts) -> None:
    """A conservation check that always fails, as a real one does when counts differ."""
    raise PipelineError(f"{stage_name}: refused ({n_in} in, {dict(parts)} out)")
