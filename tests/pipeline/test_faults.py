"""Faults injected from outside into real Spark jobs, compared with runs that were not disturbed;
each test adds its rows to the fault table (tests/helpers/faults.py, ``make faults``)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import ROOT
from helpers.faults import MlflowServer, kill_when, record, spark_env
from helpers.spark_jobs import job_config, output_path

from common import published
from common.failpoints import ENV as FAILPOINT_ENV

pytestmark = [pytest.mark.spark, pytest.mark.faults]
SETTINGS = ["vocab.drop_top=0", "vocab.size=2000"]


def _rows(spark, target: str) -> list[tuple]:
    """A published output's rows, sorted (Parquet; text outputs by line)."""
    path = output_path(target)
    if not any(Path(path).rglob("*.parquet")):
        return sorted((str(p.relative_to(path)), p.read_text()) for p in Path(path).rglob("*") if p.is_file())
    return sorted(tuple(map(str, r)) for r in spark.read.parquet(str(path)).collect())


def _temps(folder: Path) -> list[str]:
    """Versions not published (yet) in the output folders under ``folder``, as ``<output>/<version>``."""
    return sorted(f"{d.name}/{v}" for d in folder.iterdir() if d.is_dir()
                  for v in published.unpublished_versions(os.listdir(d), published.published_pointer(d)))


JOBS = {   # job -> the outputs it publishes (conf/pipeline.yaml outputs.*)
    "clean_metadata": ("clean", "clean_rejects", "place_names"),
    "build_vocab": ("vocab", "dataset", "dataset_rejects", "stats"),
    "frequency_baselines": ("baselines",),
}


def test_each_spark_job_killed_mid_write_reruns_to_the_same_outputs(spark, tmp_path, synth_world):
    """For each job in pipeline order: a run as reference; the same job under spark-submit,
    SIGKILLed as soon as its first new version appears on disk (mid-write); the published outputs
    must be the reference's, untouched; rerunning the same job must remove the unpublished versions
    and publish the same rows again."""
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
        # Killed when a new version appears (Spark writing), or at the latest with every output
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
        assert _temps(work) == []                                             # the killed run's versions gone
        assert {o: _rows(spark, cfg.outputs[o]) for o in outputs} == reference
        point = "at publish (every output written)" if marker.exists() else f"when a version of {left[0].split('/')[0]} appeared"
        record(f"{job} killed mid-write", f"SIGKILL to spark-submit's process group {ran:.0f} s in, {point}",
               f"outputs untouched; rerun removed {len(left)} unpublished version(s)", "0 rows", recovery)



# --- the MLflow tracking server goes away --------------------------------------------------------------

def test_a_pipeline_job_outlives_a_tracking_server_that_goes_away(spark, tmp_path, synth_world):
    """clean_metadata under spark-submit logs to ``mlflow server``, which is SIGKILLed once the job
    has started reading and restarted once the job has noticed: the job finishes and publishes;
    its run holds every metric an undisturbed run logs, and ends FINISHED."""
    import subprocess

    import mlflow
    from helpers.servers import free_port

    from jobs.clean_metadata import main as clean_metadata

    reference = job_config(tmp_path / "reference", synth_world, *SETTINGS)
    clean_metadata(reference)
    server = MlflowServer(tmp_path, free_port())
    server.start()
    args = [f"paths.root_dir={tmp_path}", f"paths.raw_dir={synth_world}", f"paths.mlflow_tracking_uri={server.uri}",
            "spark.shuffle_partitions=2", "mlflow.retry_seconds=2", *SETTINGS]
    log = tmp_path / "job.log"
    job = subprocess.Popen(["spark-submit", "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                            str(ROOT / "jobs" / "clean_metadata.py"), *args], cwd=ROOT, env=spark_env(),
                           stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        for marker in ("reading ", "unreachable"):
            while marker not in log.read_text():
                assert job.poll() is None, log.read_text()[-3000:]
                time.sleep(0.05)
            if marker == "reading ":
                server.kill()
                down = time.perf_counter()
        server.start()
        recovery = time.perf_counter() - down
        assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert text.count("unreachable") == 1 and text.count("is back after") == 1, text[-3000:]
        client = mlflow.MlflowClient(server.uri)
        run = client.search_runs([client.get_experiment_by_name("pipeline/clean_metadata").experiment_id])[0]
        ref = mlflow.MlflowClient(reference.paths.mlflow_tracking_uri)
        ref_run = ref.search_runs([ref.get_experiment_by_name("pipeline/clean_metadata").experiment_id])[0]
        assert run.info.status == "FINISHED" and run.data.metrics.keys() == ref_run.data.metrics.keys()
        assert run.data.metrics["kept"] == ref_run.data.metrics["kept"]
        assert _rows(spark, f"{tmp_path}/data/work/clean") == _rows(spark, reference.outputs.clean)
    finally:
        job.kill()
        server.kill()
    record("MLflow tracking server killed during a Spark job (clean_metadata)", "SIGKILL to `mlflow server` once "
           "the job was reading, restarted once it noticed", "job finished and published; metrics sent when the "
           "server was back; one warning each way", "0 metrics, 0 rows", recovery)
