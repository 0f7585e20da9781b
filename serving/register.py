"""Register the trained models in MLflow's Model Registry, and give the best version of each an alias.

    python -m serving.register [register.alias=champion] [paths.mlflow_tracking_uri=...]

What is registered comes from what the runs recorded (conf/serving.yaml composes the settings):

- every training run whose model family serves (``Family.serves``) and that was trained for tagging:
  its MLflow Model (serving/pyfunc.py: a JPEG, and for a location model a location, in; tags out)
  under the family's registered name for tagging (``mcc``, ``locsens-tagging``, ``factorised``);
- every search gallery built with a retrieval model (``python -m serving.search build``): the
  gallery with that model, under its family's registered name for retrieval (``locsens-retrieval``).

The MLflow Model is logged into the run that made it, once (a run with a ``model_uri`` tag keeps
it), and each run's model is registered once: a rerun adds only new runs. A run whose files have
been rewritten since it ended (a later run in the same folder) is left out, with a warning. The
alias goes to the version whose training run reached the lowest validation loss (``val/loss`` at
its best epoch; for a gallery, that of the run whose checkpoint it uses). Serve one with
``python -m serving.serve`` or ``mlflow models serve -m models:/locsens-tagging@champion``.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import mlflow
from omegaconf import DictConfig

from common.config import ConfigError, compose_config
from common.files import file_stamp
from common.tracking import SEARCH, TRAIN, check_uri, first_line
from serving.pyfunc import RETRIEVAL, log_model, retriever_inputs, tagger_inputs
from training.evaluate.runs import FAMILY_TAG, TASKS_TAG
from training.models import family_named
from training.models.family import Family
from training.tracking import CHECKPOINT_TAG, IMAGE_MODEL_TAG, SHARDS_TAG, STAMPS_TAG, VOCABULARY_TAG

log = logging.getLogger("serving.register")

MODEL_URI_TAG = "model_uri"


@dataclass
class Candidate:
    """A run whose model goes to registered model ``name``."""

    name: str
    run_id: str
    val_loss: float
    #: The MLflow Model it has logged already, or how to log it: (kind, artifacts, input example).
    model_uri: Optional[str] = None
    make: Optional[Callable[[], tuple]] = None
    description: str = ""


def _best_val_loss(client, run_id: Optional[str]) -> float:
    history = client.get_metric_history(run_id, "val/loss") if run_id else []
    return min((m.value for m in history), default=math.inf)


def _changed(tags: dict[str, str]) -> list[str]:
    """The files a run's model is made of that are gone or rewritten since the run recorded them."""
    stamps = json.loads(tags.get(STAMPS_TAG) or "{}")
    return [path for path, stamp in stamps.items() if file_stamp(path) != stamp]


def _family(run, what: str) -> Optional[Family]:
    """The model family a run recorded, or None (and a warning) for one this code does not know."""
    try:
        return family_named(run.data.tags[FAMILY_TAG])
    except ValueError as exc:
        log.warning("%s %s: %s; not registered", what, run.info.run_id, exc)
        return None


def training_candidates(client) -> list[Candidate]:
    """Training runs whose family serves tagging: one candidate each."""
    experiment = client.get_experiment_by_name(TRAIN)
    runs = client.search_runs([experiment.experiment_id], f"tags.{FAMILY_TAG} != ''", max_results=10000) \
        if experiment else []
    out = []
    for run in runs:
        tags, family = run.data.tags, _family(run, "run")
        name = family.registered.get("tagging") if family else None
        if not (name and family.serves and "tagging" in tags.get(TASKS_TAG, "").split(",")):
            continue
        if tags.get(MODEL_URI_TAG):
            out.append(Candidate(name, run.info.run_id, _best_val_loss(client, run.info.run_id),
                                 model_uri=tags[MODEL_URI_TAG]))
            continue
        if not tags.get(CHECKPOINT_TAG) or not tags.get(IMAGE_MODEL_TAG):
            log.warning("run %s (%s) recorded no model to serve (no checkpoint or image model); not registered",
                        run.info.run_id, run.info.run_name)
            continue
        changed = _changed(tags)
        if changed:
            log.warning("run %s (%s): %s gone or rewritten since the run ended; not registered", run.info.run_id,
                        run.info.run_name, ", ".join(changed))
            continue

        def make(tags=tags, kind=family.serves):
            return (kind, *tagger_inputs(kind, image_model=tags[IMAGE_MODEL_TAG], vocabulary=tags[VOCABULARY_TAG],
                                         checkpoint=tags[CHECKPOINT_TAG], shards_dir=tags.get(SHARDS_TAG) or None))
        out.append(Candidate(name, run.info.run_id, _best_val_loss(client, run.info.run_id), make=make,
                             description=family.description))
    return out


def gallery_candidates(client) -> list[Candidate]:
    """Search galleries built with a retrieval model: one candidate each, scored by the val/loss of
    the training run whose checkpoint it uses."""
    search = client.get_experiment_by_name(SEARCH)
    train = client.get_experiment_by_name(TRAIN)
    if search is None:
        return []
    trained = client.search_runs([train.experiment_id], f"tags.{CHECKPOINT_TAG} != ''", max_results=10000) \
        if train else []
    by_checkpoint = {r.data.tags[CHECKPOINT_TAG]: r.info.run_id for r in trained}
    out = []
    for run in client.search_runs([search.experiment_id], f"tags.{FAMILY_TAG} != ''", max_results=10000):
        tags, family = run.data.tags, _family(run, "gallery run")
        retriever, gallery = tags.get(CHECKPOINT_TAG), tags.get("gallery_dir")
        name = family.registered.get("retrieval") if family else None
        if not (name and retriever and gallery):
            continue
        val_loss = _best_val_loss(client, by_checkpoint.get(retriever))
        if tags.get(MODEL_URI_TAG):
            out.append(Candidate(name, run.info.run_id, val_loss, model_uri=tags[MODEL_URI_TAG]))
            continue
        changed = _changed(tags)
        if changed:
            log.warning("gallery run %s: %s gone or rewritten since it was built; not registered", run.info.run_id,
                        ", ".join(changed))
            continue
        out.append(Candidate(name, run.info.run_id, val_loss,
                             make=lambda g=gallery, r=retriever: (RETRIEVAL, *retriever_inputs(g, r)),
                             description=f"{family.label} over a search gallery: a tag and a location in, photos out."))
    return out


def log_models(client, found: Sequence[Candidate], say: Callable[[str], None] = print) -> None:
    """Log the MLflow Model of every candidate that has none yet, into its own run."""
    for c in found:
        if c.model_uri or c.make is None:
            continue
        kind, artifacts, example = c.make()
        with mlflow.start_run(run_id=c.run_id):
            c.model_uri = log_model(kind, artifacts, example)
            mlflow.set_tag(MODEL_URI_TAG, c.model_uri)
        say(f"logged the {c.name} model of run {c.run_id}: {c.model_uri}")


def register(client, found: Sequence[Candidate], alias: str,
             say: Callable[[str], None] = print) -> dict[str, dict[str, str]]:
    """Register what is not yet registered and move ``alias`` to each model's best version;
    {name: {"version", "run_id", "alias"}} of the versions the alias points at."""
    chosen: dict[str, dict[str, str]] = {}
    for name in sorted({c.name for c in found}):
        mine = [c for c in found if c.name == name and c.model_uri]
        if not mine:
            continue
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, description=next((c.description for c in mine if c.description), ""))
        versions = {v.run_id: v for v in client.search_model_versions(f"name = '{name}'")}
        for c in mine:
            if c.run_id not in versions:
                v = mlflow.register_model(c.model_uri, name)
                versions[c.run_id] = client.get_model_version(name, v.version)
                say(f"registered {name} version {v.version} (run {c.run_id})")
        best = min(mine, key=lambda c: (c.val_loss, -int(versions[c.run_id].version)))
        version = versions[best.run_id].version
        client.set_registered_model_alias(name, alias, version)
        chosen[name] = {"version": str(version), "run_id": best.run_id, "alias": alias}
        say(f"{name}@{alias} -> version {version} (run {best.run_id}, best val/loss {best.val_loss:.4f})")
    return chosen


def run(cfg: DictConfig, say: Callable[[str], None] = print) -> dict[str, dict[str, str]]:
    uri = check_uri(cfg.paths.mlflow_tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    found = training_candidates(client) + gallery_candidates(client)
    if not found:
        raise LookupError(f"no run in {uri} made a model to register (train MCC and LocSens first, e.g. make demo)")
    log_models(client, found, say)
    return register(client, found, cfg.register.alias, say)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        run(compose_config("serving", argv))
    except (ConfigError, ValueError, LookupError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
