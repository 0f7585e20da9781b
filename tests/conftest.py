"""Shared fixtures: paths to the real sample lines, one local SparkSession per test run, a small
synthetic world, and the composed training config."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from helpers import faults
from helpers.config import train_config

from common.markdown import write_block

ROOT = Path(__file__).resolve().parents[1]
#: Real lines and the authors' vocabulary, carried by the repository (tests/data/README.md).
REAL_HEAD = ROOT / "tests" / "data" / "yfcc100m_dataset-head1k.tsv"
REAL_VOCAB = ROOT / "pipeline" / "synth" / "data" / "vocab_words_100k.txt"


@pytest.fixture(scope="session")
def real_head_path() -> Path:
    """The first 1,000 real lines of the 2016 yfcc100m_dataset."""
    if not REAL_HEAD.exists():
        pytest.fail(f"missing {REAL_HEAD}: the real YFCC sample lines (see tests/data/README.md)")
    return REAL_HEAD


@pytest.fixture(scope="session")
def real_vocab_path() -> Path:
    if not REAL_VOCAB.exists():
        pytest.fail(f"missing {REAL_VOCAB}: the authors' released vocabulary")
    return REAL_VOCAB


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session for the whole run (JVM start is the expensive part)."""
    from pipeline.spark import spark_session

    session = spark_session("locsens-tests", master="local[2]", ui=False, shuffle_partitions=4)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory) -> Path:
    """A small synthetic world with images (25-column layout), generated once per test run."""
    from pipeline.synth.generate import SynthParams, generate

    out = tmp_path_factory.mktemp("synth_world")
    generate(SynthParams(out=out, photos=2500, seed=11, image_size=64, workers=1, vocab=REAL_VOCAB), progress=None)
    return out


class _NoRenames:
    """A Hadoop FileSystem that refuses renames, as publishing on an object store must work
    without them; everything else goes to the real one."""

    def __init__(self, fs):
        self._fs = fs

    def rename(self, *args):
        raise AssertionError(f"rename{args}: publishing must not rename")

    def __getattr__(self, name):
        return getattr(self._fs, name)


@pytest.fixture
def no_renames(monkeypatch):
    """Every Hadoop FileSystem the jobs' publishing uses (pipeline.io) refuses renames."""
    from pipeline import io

    real = io._fs_and_path

    def fs_and_path(spark, path):
        fs, hpath = real(spark, path)
        return _NoRenames(fs), hpath

    monkeypatch.setattr(io, "_fs_and_path", fs_and_path)


def pytest_terminal_summary(terminalreporter):
    """The fault table (tests/helpers/faults.py), when fault tests ran."""
    if not faults.ROWS:
        return
    terminalreporter.section("fault table")
    terminalreporter.write_line(faults.table())
    if os.environ.get("FAULT_TABLE"):
        Path(os.environ["FAULT_TABLE"]).write_text(faults.table() + "\n")
    if os.environ.get("FAULT_DOC"):      # make faults: the table into docs/faults.md
        write_block(os.environ["FAULT_DOC"], "faults", faults.table(), "make faults")


@pytest.fixture
def train_cfg(tmp_path):
    """conf/train.yaml composed for a CPU run under the test's folder (outputs and MLflow store there):
    ``train_cfg("+experiment=mcc", *TINY_IMAGE, shards=shards)`` (tests/helpers/config.py)."""
    return functools.partial(train_config, tmp_path)
