"""The README's commands start: each entry point finds its Hydra config when run as a module from
the repository root (``--cfg job`` composes and prints the config, runs nothing)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command, expect", [
    (["training.run", "+experiment=locsens_raw", "+sample=locsens"], "task_name: locsens_raw"),
    (["training.evaluate", "embeddings_dir=outputs/mcc/embeddings"], "embeddings_dir: outputs/mcc/embeddings"),
    (["training.report"], "run_name: demo"),
])
def test_entry_point_composes_its_config(command, expect):
    proc = subprocess.run([sys.executable, "-m", *command, "--cfg", "job"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout
