"""The user's Spark settings win over the project's: a real ``spark-submit`` of clean_metadata with
``--conf``, with a ``spark-defaults.conf``, and with neither (then conf/pipeline.yaml's small
shuffle applies: spark.shuffle_partitions=auto on a local master). What Spark ran with is
recorded as ``effective.*`` parameters of the job's run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from helpers import ROOT
from helpers.yfcc import TOWNS, at, write_raw

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"

pytestmark = [pytest.mark.spark, pytest.mark.slow]   # spark-submit in subprocesses


def submit_clean(tmp_path: Path, *spark_args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Run clean_metadata through spark-submit on a one-line input; its MLflow run's parameters."""
    raw = write_raw(tmp_path / "raw", [at("nyc", 1, tags="cat,dog")], {1: TOWNS["nyc"]})
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cmd = [str(SPARK_SUBMIT), "--master", "local[1]", *spark_args, "jobs/clean_metadata.py",
           f"paths.root_dir={tmp_path}", f"paths.raw_dir={raw}", f"paths.mlflow_tracking_uri={uri}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
                               **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["pipeline/clean_metadata"], output_format="list")[0].data.params


@pytest.mark.parametrize("how, expected", [("conf", "13"), ("defaults_file", "17"), ("nothing", "8")])
def test_spark_submit_settings_win_over_the_project_defaults(tmp_path, how, expected):
    args, env = [], {}
    if how == "conf":
        args = ["--conf", "spark.sql.shuffle.partitions=13", "--conf", "spark.sql.optimizer.windowGroupLimitThreshold=500",
                "--conf", "spark.sql.inMemoryColumnarStorage.compressed=true"]
    elif how == "defaults_file":
        conf_dir = tmp_path / "spark-conf"
        conf_dir.mkdir()
        (conf_dir / "spark-defaults.conf").write_text("spark.sql.shuffle.partitions   17\n")
        env = {"SPARK_CONF_DIR": str(conf_dir)}
    params = submit_clean(tmp_path, *args, env=env)
    assert params["spark.shuffle_partitions"] == "auto"            # the project's default, unchanged
    assert params["effective.spark.sql.shuffle.partitions"] == expected
    assert params["effective.spark.master"] == "local[1]"
    # The settings chosen for speed (the project's, and clean_metadata's own) give way the same.
    assert (params["effective.spark.sql.optimizer.windowGroupLimitThreshold"],
            params["effective.spark.sql.inMemoryColumnarStorage.compressed"]) == \
        (("500", "true") if how == "conf" else ("-1", "false"))
