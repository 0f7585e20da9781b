"""The trained models the serving tests use, made once per test run: real JPEG shards -> MCC
(trained, exported) -> LocSens (trained on the export) -> a search gallery recorded in MLflow ->
the models registered -> the REST service as a real process."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from helpers.config import TINY_IMAGE, paths, train_config
from helpers.servers import free_port, serving
from helpers.shards import make_shards

from serving.register import main as register
from training.run import train


@dataclass(frozen=True)
class Trained:
    root: Path
    shards: Path
    export: Path
    locsens: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root}/mlruns.db"

    def settings(self, gallery: Path) -> list[str]:
        """The serving commands' overrides for this fixture and ``gallery``."""
        return [*paths(self.root), f"paths.shards_dir={self.shards}", f"gallery.dir={gallery}"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """MCC and LocSens (raw locations, tagging) trained for one epoch each on a small shard fixture
    whose vocabulary holds a tag that is markup (helpers.shards.HOSTILE_TAG)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    shards = root / "shards"
    make_shards(shards, rows={"train": 64, "val": 24, "test": 40}, row_group_size=10, files_per_split=1, hostile=True)
    train(train_config(root, "+experiment=mcc", *TINY_IMAGE, "trainer.max_epochs=1", shards=shards))
    export = root / "outputs" / "mcc" / "embeddings"
    train(train_config(root, "+experiment=locsens_raw", "trainer.max_epochs=1", "evaluation.min_images=5",
                       "model.hidden=[64,32]", "model.groups=8", "data.batch_size=16", shards=shards,
                       embeddings=export))
    return Trained(root, shards, export, root / "outputs" / "locsens_raw" / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="session")
def gallery(trained) -> Path:
    """The test split indexed (HNSW) with the LocSens model for tagging and retrieval, built as a user
    builds it (``python -m serving.search build``)."""
    out = trained.root / "gallery"
    proc = subprocess.run(
        [sys.executable, "-m", "serving.search", "build", *trained.settings(out), f"gallery.embeddings_dir={trained.export}",
         f"gallery.tagger={trained.locsens}", f"gallery.retriever={trained.locsens}", "gallery.index=hnsw"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "indexed 40 photos" in proc.stdout
    return out


@pytest.fixture(scope="session")
def registered(trained, gallery) -> str:
    """The fixture's models in its tracking store's registry (``python -m serving.register``); the URI."""
    assert register(paths(trained.root)) == 0
    return trained.uri


@pytest.fixture(scope="session")
def service(trained, gallery, registered):
    """``python -m serving.serve`` over the registered models, as a real process; its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "serving.serve", *trained.settings(gallery), f"serve.port={port}",
                  "serve.max_bytes=200000", "serve.max_pixels=4000000", "serve.photo_cache_groups=2",
                  "serve.workers=1", "serve.queue=2"], f"{base}/health", timeout=240, cwd=ROOT,
                 env={**os.environ, "PYTHONPATH": str(ROOT)}):
        yield base
