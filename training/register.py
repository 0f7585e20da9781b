"""Register the trained models in MLflow's Model Registry, and give the best version of each an alias.

    python -m training.register [--tracking-uri sqlite:///mlruns.db] [--alias champion]

Registered models, from the runs that logged an MLflow Model (``model_uri`` tag):

- ``mcc``: MCC training runs (a JPEG in, tags out);
- ``locsens-tagging``: LocSens runs trained for tagging (a JPEG and a location in, tags out);
- ``factorised``: factorised-model runs (the same interface);
- ``locsens-retrieval``: search-index builds with a retrieval model (a tag and a location in, the
  indexed gallery's photos out).

Each run's model is registered once: a rerun adds only new runs. The alias (``champion``) goes to
the version whose training run reached the lowest validation loss (``val/loss`` at its best
epoch; for ``locsens-retrieval``, that of the LocSens run whose checkpoint the index uses).
Serve one with ``make serve`` or ``mlflow models serve -m models:/locsens-tagging@champion``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from common.tracking import check_uri

DESCRIPTIONS = {
    "mcc": "MCC: a JPEG in, its top tags by image-tag cosine out (location-agnostic).",
    "locsens-tagging": "LocSens trained for tagging, with the MCC it reads: a JPEG and a location in, top tags out.",
    "factorised": "The factorised location-sensitive model with MCC: a JPEG and a location in, top tags out.",
    "locsens-retrieval": "LocSens retrieval model over the indexed test gallery: a tag and a location in, photos out.",
}


@dataclass
class Candidate:
    name: str
    run_id: str
    model_uri: str
    val_loss: float


def _params(run) -> dict[str, str]:
    return run.data.params


def _which(run) -> Optional[str]:
    """The registered model a training run's model belongs to (None: not registered)."""
    target, negatives = _params(run).get("model._target_", ""), _params(run).get("model.negatives_mode")
    if target.endswith(".MCC"):
        return "mcc"
    if target.endswith(".Factorised"):
        return "factorised"
    if target.endswith(".LocSens") and negatives == "tagging":
        return "locsens-tagging"
    return None


def _best_val_loss(client, run_id: Optional[str]) -> float:
    history = client.get_metric_history(run_id, "val/loss") if run_id else []
    return min((m.value for m in history), default=math.inf)


def candidates(client) -> list[Candidate]:
    """Every run with a logged model that belongs to one of the registered models."""
    out: list[Candidate] = []
    train = client.get_experiment_by_name("train")
    runs = client.search_runs([train.experiment_id], "tags.model_uri != ''", max_results=10000) if train else []
    trained = client.search_runs([train.experiment_id], "tags.best_checkpoint != ''",
                                 max_results=10000) if train else []
    by_checkpoint = {r.data.tags["best_checkpoint"]: r.info.run_id for r in trained}
    for run in runs:
        name = _which(run)
        if name:
            out.append(Candidate(name, run.info.run_id, run.data.tags["model_uri"],
                                 _best_val_loss(client, run.info.run_id)))
    search = client.get_experiment_by_name("search")
    for run in client.search_runs([search.experiment_id], "tags.model_uri != ''", max_results=10000) if search else []:
        trained = by_checkpoint.get(_params(run).get("models.retriever"))
        out.append(Candidate("locsens-retrieval", run.info.run_id, run.data.tags["model_uri"],
                             _best_val_loss(client, trained)))
    return out


def register(client, found: Sequence[Candidate], alias: str,
             say: Callable[[str], None] = print) -> dict[str, dict[str, str]]:
    """Register what is not yet registered and move ``alias`` to each model's best version;
    {name: {"version", "run_id", "alias"}} of the versions the alias points at."""
    import mlflow

    chosen: dict[str, dict[str, str]] = {}
    for name in sorted({c.name for c in found}):
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, description=DESCRIPTIONS.get(name, ""))
        versions = {v.run_id: v for v in client.search_model_versions(f"name = '{name}'")}
        mine = [c for c in found if c.name == name]
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.register", description=__doc__.split("\n")[0])
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"))
    p.add_argument("--alias", default="champion")
    args = p.parse_args(argv)
    import mlflow

    try:
        mlflow.set_tracking_uri(check_uri(args.tracking_uri))
        mlflow.set_registry_uri(args.tracking_uri)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = mlflow.MlflowClient()
    found = candidates(client)
    if not found:
        print(f"error: no run in {args.tracking_uri} logged a model to register (train MCC and LocSens first, "
              "e.g. make demo)", file=sys.stderr)
        return 2
    register(client, found, args.alias)
    return 0


if __name__ == "__main__":
    sys.exit(main())
