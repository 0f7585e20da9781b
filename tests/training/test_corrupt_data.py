"""Corrupt inputs stop a training run before it starts, with one line naming the file; with
``data.on_bad_file=skip`` the bad file is left out and counted in MLflow. Real files, made bad the
way disks and people make them: truncated, rewritten with another schema, deleted, or an
embeddings export from another vocabulary."""
from __future__ import annotations

import os
import shutil
import time
import subprocess
import sys
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import ROOT
from helpers.config import CPU, TINY_IMAGE, compose, paths
from helpers.embeddings import write_embeddings
from helpers.faults import record
from helpers.shards import make_shards

from common.contract import read_manifest
from training.data.embeddings import LocSensDataModule
from training.data.shards import ShardDataModule
from training.errors import SetupError
from training.run import train

pytestmark = pytest.mark.faults
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corrupt") / "shards"
    make_shards(out, rows={"train": 64, "val": 24, "test": 24}, row_group_size=8, files_per_split=2)
    return out


def _copy(shards: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the shards and the path of its first training file."""
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    return out, out / read_manifest(out).splits["train"].files[0].path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_schema(path: Path) -> None:
    table = pq.read_table(path)
    i = table.schema.get_field_index("image")
    pq.write_table(table.set_column(i, "image", pa.array([b.hex() for b in table.column("image").to_pylist()])), path)


@pytest.mark.parametrize("damage, message", [
    (_truncate, "not a readable Parquet file"),
    (_other_schema, "column 'image' is string, expected binary"),
    (Path.unlink, "listed in the manifest but missing"),
    (lambda p: pq.write_table(pq.read_table(p).slice(0, 5), p), "holds 5 rows, the manifest says 32"),
])
def test_a_bad_shard_stops_the_run_naming_the_file(clean_shards, tmp_path, damage, message):
    shards, bad = _copy(clean_shards, tmp_path)
    damage(bad)
    t0 = time.perf_counter()
    with pytest.raises(SetupError) as err:
        ShardDataModule(str(shards)).check_files()
    checked = time.perf_counter() - t0
    text = str(err.value)
    assert text.startswith(f"{bad}: {message}") and "data.on_bad_file=skip" in text and "\n" not in text
    skipped = ShardDataModule(str(shards), on_bad_file="skip")
    assert [b.path for b in skipped.check_files()] == [str(bad)]
    second = read_manifest(shards).splits["train"].files[1].path
    assert [f.path for f in skipped.manifest.splits["train"].files] == [second]
    assert ShardDataModule(str(clean_shards)).check_files() == []
    record(f"shard file: {message.split(' (')[0]}", "a listed training shard damaged before training",
           "one-line error naming the file before training; data.on_bad_file=skip trains without it (counted)",
           "0 (the run does not start), or that file's rows with skip", checked)


def test_a_bad_setting_and_all_files_bad_are_refused(clean_shards, tmp_path):
    with pytest.raises(SetupError, match=r"data.on_bad_file='ignore': expected one of error, skip"):
        ShardDataModule(str(clean_shards), on_bad_file="ignore").check_files()
    shards, _ = _copy(clean_shards, tmp_path)
    for f in shards.glob("*/*.parquet"):
        _truncate(f)
    with pytest.raises(SetupError, match="every one of the 6 shards"):
        ShardDataModule(str(shards), on_bad_file="skip").check_files()


def test_an_export_from_another_vocabulary_is_refused(clean_shards, tmp_path):
    export = write_embeddings(tmp_path / "export", num_tags=read_manifest(clean_shards).vocab_size)
    with pytest.raises(SetupError, match=r"its tags are not the vocabulary of .*vocab.parquet.*re-export MCC"):
        LocSensDataModule(str(export), shards_dir=str(clean_shards)).check_files()
    n = read_manifest(clean_shards).vocab_size + 5
    other = write_embeddings(tmp_path / "other", num_tags=n)
    with pytest.raises(SetupError, match=rf"{n} tags, but the vocabulary of .* has"):
        LocSensDataModule(str(other), shards_dir=str(clean_shards)).check_files()
    # Without shards to compare with, the export's own files are checked, and a bad one skipped.
    files = sorted((export / "images" / "train").glob("*.parquet"))
    _truncate(files[0])
    with pytest.raises(SetupError, match=f"{files[0]}: not a readable Parquet file"):
        LocSensDataModule(str(export)).check_files()
    dm = LocSensDataModule(str(export), on_bad_file="skip")
    assert len(dm.check_files()) == 1 and dm.split_arrays("test")["embedding"].shape[0] == 150
    record("embeddings export from another vocabulary", "LocSens pointed at an export of other shards",
           "one-line error naming the export and the vocabulary before training", "0 (the run does not start)", 0.0)


def test_training_run_says_it_in_one_line_or_skips_and_counts(clean_shards, tmp_path):
    shards, bad = _copy(clean_shards, tmp_path)
    _truncate(bad)
    args = [*paths(tmp_path, shards), *CPU, *TINY_IMAGE, "trainer.max_epochs=1"]
    proc = subprocess.run([sys.executable, "-m", "training.run", "+experiment=mcc", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: not a readable Parquet file")
    assert not (tmp_path / "outputs" / "mcc" / "checkpoints").exists()
    train(compose("train", "+experiment=mcc", *args, "data.on_bad_file=skip"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    assert run.data.metrics["data/bad_files"] == 1
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="data/bad_files.json",
                                                tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    assert str(bad) in Path(local).read_text()
