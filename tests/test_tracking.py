"""MLflow bookkeeping: experiments the UI opens on their runs, with a description each; telemetry off."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow

from common.tracking import (DESCRIPTION_TAG, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, describe, get_or_create_experiment,
                             stage_run)


def test_experiments_are_model_training_experiments_with_a_description(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    with stage_run("evaluate", "run", {"a": 1}, tracking_uri=uri, artifact_root=str(tmp_path / "art")):
        pass
    with stage_run("pipeline/clean_metadata", "clean_metadata", {}, tracking_uri=uri):
        pass
    client = mlflow.MlflowClient(uri)
    for name, words in (("evaluate", "P@10"), ("pipeline/clean_metadata", "spark-submit jobs/clean_metadata.py")):
        tags = client.get_experiment_by_name(name).tags
        assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
        assert words in tags[DESCRIPTION_TAG] and tags[DESCRIPTION_TAG] == describe(name)


def test_an_experiment_made_before_gets_its_kind(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    mlflow.set_tracking_uri(uri)
    old = mlflow.create_experiment("train")          # as older code made it: no tags
    assert get_or_create_experiment("train", None) == old
    tags = mlflow.MlflowClient(uri).get_experiment(old).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND and "training.run" in tags[DESCRIPTION_TAG]


def test_telemetry_is_off_unless_the_user_allows_it():
    """In a fresh process without the setting (pytest itself would hide telemetry from MLflow)."""
    code = ("import common.tracking; from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY as T; "
            "print(T.get())")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "PYTEST_CURRENT_TEST")}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    allowed = subprocess.run([sys.executable, "-c", code], env={**env, "MLFLOW_DISABLE_TELEMETRY": "false"}, cwd=root,
                             capture_output=True, text=True, check=True)
    assert allowed.stdout.strip() == "False"
