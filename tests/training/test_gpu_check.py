"""``make gpu-check`` (bench/gpu_check.py) in its tiny CPU form: it builds its shard, measures every
figure it promises, and prints them; so the script a GPU machine runs has run before it gets one."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--work", str(tmp_path),
                           "--doc", str(tmp_path / "page.md")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for what in ("fed by the loader", "the ceiling", "the loader alone", "LocSens training", "exact evaluation, bf16",
                 "exact evaluation, fp32"):
        row = next(line for line in out.splitlines() if what in line)
        rate = float(re.search(r"\| ([\d,.]+) \|", row).group(1).replace(",", ""))
        assert rate > 0, row
    assert "not written to" in out and not (tmp_path / "page.md").exists()      # no GPU, no figures in the docs
