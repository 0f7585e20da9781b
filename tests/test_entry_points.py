"""The README's commands start, each composing conf/ when run as a module from the repository root:
the Hydra apps print their config (``--cfg job`` composes it and runs nothing); the serving
commands take the same ``key=value`` settings and name them in their one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow          # each command starts its own Python
ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess:
    """A command as a user runs it: no tracking store named by the environment (a training run in
    this test process names one there)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("command, expect", [
    (["training.run", "+experiment=locsens_raw", "+sample=locsens"], "task_name: locsens_raw"),
    (["training.evaluate", "embeddings_dir=outputs/mcc/embeddings"], "embeddings_dir: outputs/mcc/embeddings"),
    (["training.report"], "run_name: demo"),
])
def test_hydra_app_composes_its_config(command, expect):
    proc = _run(*command, "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout


def test_serving_commands_compose_conf(tmp_path):
    """A setting given on the command line reaches each serving command (paths from conf/paths)."""
    search = _run("serving.search", "photos", "--tag", "beach", "--near", "1,2", f"paths.root_dir={tmp_path}")
    assert search.returncode == 2 and f"no search index at {tmp_path}/outputs/search" in search.stderr
    register = _run("serving.register", f"paths.root_dir={tmp_path}")
    assert register.returncode == 2 and f"no run in sqlite:///{tmp_path}/mlruns.db" in register.stderr
    serve = _run("serving.serve", f"paths.root_dir={tmp_path}", "serve.tagging=models:/nothing@champion")
    assert serve.returncode == 2 and "cannot load the models (models:/nothing@champion" in serve.stderr
    bad = _run("serving.register", "register.nope=1")
    assert bad.returncode == 2 and "register.nope" in bad.stderr and "Traceback" not in bad.stderr
