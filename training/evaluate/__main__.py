"""``python -m training.evaluate embeddings_dir=...``: evaluate an embeddings export (conf/eval.yaml).

The Hydra entry lives here, in the file run as ``__main__``, so that Hydra finds ``conf/`` relative
to this file."""
import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from common.embeddings import EmbeddingsManifest
from training.evaluate.embeddings import evaluate_embeddings
from training.evaluate.runs import embeddings_tags, log_evaluation, model_tags
from training.models import family_named
from training.models.family import TASKS

log = logging.getLogger("training.evaluate")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="eval.yaml")
def main(cfg: DictConfig) -> dict[str, float]:
    metrics = evaluate_embeddings(cfg.embeddings_dir, shards_dir=cfg.get("shards_dir"), **cfg.evaluation)
    for k, v in metrics.items():
        log.info("%s = %.3f", k, v)
    if cfg.get("mlflow", True):
        manifest = EmbeddingsManifest.read(cfg.embeddings_dir)
        model = model_tags(family_named(manifest.family), TASKS) if manifest.family else {}
        log_evaluation(metrics, OmegaConf.to_container(cfg, resolve=True),
                       tracking_uri=cfg.paths.mlflow_tracking_uri,
                       artifact_root=cfg.paths.mlflow_artifact_root,
                       run_name=cfg.task_name, tags={**embeddings_tags(cfg.embeddings_dir, manifest), **model})
    return metrics


main()
