"""The README's commands start, each composing conf/ when run as a module from the repository root:
the Hydra apps print their config (``--cfg job`` composes it and runs nothing); the serving
commands take the same ``key=value`` settings and name them in their one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess:
    """A command as a user runs it: no tracking store named by the environment (a training run in
    this test process names one there)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow              # each command starts its own Python
@pytest.mark.parametrize("command, expect", [
    (["training.run", "+experiment=locsens_raw", "+sample=locsens"], "task_name: locsens_raw"),
    (["training.evaluate", "embeddings_dir=outputs/mcc/embeddings"], "embeddings_dir: outputs/mcc/embeddings"),
    (["training.report"], "run_name: demo"),
])
def test_hydra_app_composes_its_config(command, expect):
    proc = _run(*command, "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout


def test_serving_commands_compose_conf(tmp_path, monkeypatch, capsys):
    """A setting given on the command line reaches each serving command (paths from conf/paths; no
    tracking store named by the environment, as for a user). In this process: their ``main``."""
    from serving import register, search, serve

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert search.main(["photos", "--tag", "beach", "--near", "1,2", f"paths.root_dir={tmp_path}"]) == 2
    assert f"no search index at {tmp_path}/outputs/search" in capsys.readouterr().err
    assert register.main([f"paths.root_dir={tmp_path}"]) == 2
    assert f"no run in sqlite:///{tmp_path}/mlruns.db" in capsys.readouterr().err
    assert serve.main([f"paths.root_dir={tmp_path}", "serve.tagging=models:/nothing@champion"]) == 2
    assert "cannot load the models (models:/nothing@champion" in capsys.readouterr().err
    assert register.main(["register.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "register.nope" in err and "Traceback" not in err
