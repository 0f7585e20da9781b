"""Faults injected from outside into real processes, compared with runs that were not disturbed;
each test adds its rows to the fault table (tests/faults.py, ``make faults``)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from faults import kill_when, record, spark_env
from job_helpers import job_config

from common.failpoints import ENV as FAILPOINT_ENV

pytestmark = [pytest.mark.spark, pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["vocab.drop_top=0", "vocab.size=2000"]


def _rows(spark, path: str) -> list[tuple]:
    """An output's rows, sorted (a Parquet folder or file; text outputs by line)."""
    if Path(path).suffix == ".json" or (Path(path).is_dir() and not any(Path(path).rglob("*.parquet"))):
        return sorted((str(p.relative_to(path)), p.read_text()) for p in Path(path).rglob("*") if p.is_file())
    return sorted(tuple(map(str, r)) for r in spark.read.parquet(path).collect())


def _temps(folder: Path) -> list[str]:
    """Temps and set-aside outputs under ``folder`` (pipeline/io.py names them ``.<name>.tmp-*``, ``.old-*``)."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


JOBS = {   # job -> the outputs it publishes (conf/pipeline.yaml outputs.*)
    "clean_metadata": ("clean", "clean_rejects", "place_names"),
    "build_vocab": ("vocab", "dataset", "dataset_rejects", "stats"),
    "frequency_baselines": ("baselines",),
}


def test_each_spark_job_killed_mid_write_reruns_to_the_same_outputs(spark, tmp_path, synth_world):
    """For each job in pipeline order: a run as reference; the same job under spark-submit,
    SIGKILLed as soon as its first temp output appears on disk (mid-write); the published outputs
    must be the reference's, untouched; rerunning the same job must clear the temps and publish
    the same rows again."""
    import importlib

    cfg = job_config(tmp_path, synth_world, *SETTINGS)
    work = Path(cfg.paths.work_dir)
    args = [f"paths.root_dir={tmp_path}", f"paths.raw_dir={synth_world}",
            f"paths.mlflow_tracking_uri=sqlite:///{tmp_path}/mlruns.db", "spark.shuffle_partitions=2", *SETTINGS]
    for job, outputs in JOBS.items():
        main = importlib.import_module(f"jobs.{job}").main
        main(cfg)
        reference = {o: _rows(spark, cfg.outputs[o]) for o in outputs}
        submit = ["spark-submit", "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                  str(ROOT / "jobs" / f"{job}.py"), *args]
        # Killed when a temp output appears (Spark writing), or at the latest with every output
        # written and none published (the publish failpoint: jobs whose outputs are small files).
        marker = tmp_path / f"{job}.publishing"
        env = {**spark_env(), FAILPOINT_ENV: f"publish:{marker}"}
        ran = kill_when(submit, lambda: bool(_temps(work)) or marker.exists(), tmp_path / f"{job}.log", cwd=ROOT,
                        env=env)
        left = _temps(work)
        assert left, "killed before it wrote anything"
        assert {o: _rows(spark, cfg.outputs[o]) for o in outputs} == reference      # nothing half-written visible
        t0 = time.perf_counter()
        main(cfg)                                                                     # the same job again
        recovery = time.perf_counter() - t0
        assert _temps(work) == []                                                     # the killed run's temps gone
        assert {o: _rows(spark, cfg.outputs[o]) for o in outputs} == reference
        point = "at publish (every output written)" if marker.exists() else f"when {left[0].split('.tmp-')[0]} appeared"
        record(f"{job} killed mid-write", f"SIGKILL to spark-submit's process group {ran:.0f} s in, {point}",
               f"outputs untouched; rerun removed {len(left)} temp(s)", "0 rows", recovery)
