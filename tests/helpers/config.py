"""Configs for tests, composed the one way the project composes them (common.config), with the
overrides every test run shares: training on the CPU in the test process (no loader workers, no
sanity steps, no progress bar) and tiny models."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from common.config import compose_config

#: Training in the test process on the CPU.
CPU = ["data.num_workers=0", "data.persistent_workers=false", "trainer.num_sanity_val_steps=0",
       "callbacks.progress_bar.refresh_rate=0"]
#: A small image model on the 32 px crops of helpers.shards' JPEGs.
TINY_IMAGE = ["model.backbone.name=resnet18", "model.backbone.pretrained=false", "data.batch_size=16", "data.crop=32",
              "data.prefetch_factor=null", "evaluation.min_images=5", "evaluation.chunk=16"]
#: A narrow LocSens on helpers.embeddings' 32-d export.
TINY_LOCSENS = ["model.input_dim=32", "model.modality_dim=32", "model.hidden=[64,32]", "model.groups=8",
                "data.batch_size=50", "data.shards_dir=null", "evaluation.min_images=5"]


def paths(root: Path, shards: Optional[Path] = None, embeddings: Optional[Path] = None) -> list[str]:
    """Overrides that keep a run's outputs and MLflow store under ``root``."""
    out = [f"paths.root_dir={root}", f"paths.mlflow_tracking_uri=sqlite:///{root}/mlruns.db"]
    if shards is not None:
        out.append(f"paths.shards_dir={shards}")
    if embeddings is not None:
        out.append(f"data.embeddings_dir={embeddings}")
    return out


def compose(name: str, *overrides: str) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides``, unresolved as ``@hydra.main`` hands it over."""
    return compose_config(name, list(overrides), resolve=False)


def train_config(root: Path, *overrides: str, shards: Optional[Path] = None,
                 embeddings: Optional[Path] = None) -> DictConfig:
    """conf/train.yaml for a CPU run under ``root`` (``overrides`` last, so they win)."""
    return compose("train", *paths(root, shards, embeddings), *CPU, *overrides)
