"""The whole pipeline on a small synthetic world: counts conserve at every stage, the manifest
adds up, and the frequency baselines come out in the paper's order (docs/evaluation.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.spark_jobs import job_config, output_path

from common.contract import read_manifest
from pipeline.config import run_job

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def synth(out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(out), *args], check=True,
                   capture_output=True)
    return out


def _metrics(tracking_uri: str, experiment: str) -> dict[str, float]:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["start_time DESC"], max_results=1,
                              output_format="list")
    assert runs, f"no MLflow run in {experiment}"
    return runs[0].data.metrics


def test_synthetic_world_end_to_end(spark, tmp_path):
    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata
    from jobs.frequency_baselines import main as frequency_baselines
    from jobs.shard_dataset import main as shard_dataset

    raw = synth(tmp_path / "world", "--photos", "3000", "--seed", "11", "--workers", "1")
    cfg = job_config(tmp_path, raw, "vocab.size=2000", "shard.image_size=64", "shard.rows_per_file=1000",
                     "shard.rows_per_row_group=100")
    uri = cfg.paths.mlflow_tracking_uri
    for job in (clean_metadata, build_vocab, shard_dataset, frequency_baselines):
        job(cfg)

    c = _metrics(uri, "pipeline/clean_metadata")
    assert c["input_lines"] == 3000 == c["kept"] + c["rejected"]
    assert c["rejected/video"] > 0 and c["rejected/no_geo"] > 0 and c["rejected/no_town"] > 0
    assert c["kept_without_continent"] == 0
    v = _metrics(uri, "pipeline/build_vocab")
    assert v["clean_images"] == c["kept"] == v["images"] + sum(val for k, val in v.items() if k.startswith("rejected/"))
    assert v["split/train"] + v["split/val"] + v["split/test"] == v["images"]
    s = _metrics(uri, "pipeline/shard_dataset")
    m = read_manifest(cfg.shard.output)
    assert s["input_rows"] == v["images"] == sum(i.rows for i in m.splits.values()) + s["rejected"]
    assert {k: i.rows for k, i in m.splits.items()}["test"] + s.get("rejected", 0) >= v["split/test"]
    import mlflow

    job_run = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("pipeline/shard_dataset").experiment_id])[0]
    assert m.extra["mlflow_run"]["run_id"] == job_run.info.run_id          # the training runs link back to it

    rows = json.loads((output_path(cfg.outputs.baselines) / "baselines.json").read_text())
    a = {(r["baseline"].split()[0], r["place names"]): r for r in rows}
    assert a[("town", "kept")]["A@1"] > a[("country", "kept")]["A@1"] > a[("global", "kept")]["A@1"]
    for level in ("town", "country"):
        assert a[(level, "removed")]["A@1"] < 0.8 * a[(level, "kept")]["A@1"]
        assert a[(level, "removed")]["A@10"] < a[(level, "kept")]["A@10"]
    b = _metrics(uri, "pipeline/frequency_baselines")
    assert b["baselines/town/A_at_1"] == pytest.approx(a[("town", "kept")]["A@1"])
    # The same numbers as comparable runs beside the models' evaluations (MLflow compare view).
    runs = {r.data.tags["mlflow.runName"]: r.data.metrics
            for r in mlflow.search_runs(experiment_names=["evaluate"], output_format="list")}
    assert runs["town_frequency"]["tagging/A_at_1"] == pytest.approx(a[("town", "kept")]["A@1"])
    assert runs["country_frequency"]["tagging/A_at_10_noplaces"] == pytest.approx(a[("country", "removed")]["A@10"])


def test_23_column_bz2_world(spark, tmp_path):
    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata

    raw = synth(tmp_path / "world23", "--photos", "2000", "--seed", "5", "--layout", "23", "--no-images",
                "--compress", "bz2")
    assert (raw / "yfcc100m_dataset.bz2").exists()
    cfg = job_config(tmp_path, raw, "vocab.size=1000")
    clean_metadata(cfg)
    build_vocab(cfg)
    c = _metrics(cfg.paths.mlflow_tracking_uri, "pipeline/clean_metadata")
    assert c["layout"] == 23 and c["input_lines"] == 2000 == c["kept"] + c["rejected"]
    assert c.get("rejected/no_photo_hash", 0) == 0


def test_bad_setting_is_one_line_not_a_traceback(capsys):
    def never(cfg):  # pragma: no cover - the config fails first
        raise AssertionError

    with pytest.raises(SystemExit) as exc:
        run_job(never, ["vocab.size=oops", "nokeyvalue"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nokeyvalue" in err[0] and "Traceback" not in err[0]
