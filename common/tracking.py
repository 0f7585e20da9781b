"""MLflow bookkeeping shared by the Spark jobs, training and evaluation.

Every stage records one run in an experiment named after the stage, with the resolved config as
flattened params and as a YAML artifact. The tracking store is SQLite by default (the file store
is deprecated); artifacts go to an explicit local root so runs stay readable by ``mlflow ui``.
Imports neither Spark nor torch.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

# Usage telemetry off in everything the project starts (users' machines are often offline and their
# data is theirs); set MLFLOW_DISABLE_TELEMETRY=false to allow it. Read by MLflow when it would send.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A tracking server that is down fails a request in seconds rather than after MLflow's default
# minutes of retries: the project's metric logging keeps the metrics and tries later (MetricBuffer).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")

import mlflow  # noqa: E402
from mlflow.data.dataset_source_registry import resolve_dataset_source  # noqa: E402
from mlflow.data.meta_dataset import MetaDataset  # noqa: E402

log = logging.getLogger(__name__)

#: The experiment tag MLflow's UI reads to decide what an experiment is: these are model-training
#: experiments, so the UI opens on their runs (without it, on a GenAI traces overview).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: The experiment tag the UI shows as its description.
DESCRIPTION_TAG = "mlflow.note.content"
#: The project's experiments besides the pipeline jobs' (``pipeline/<job>``).
TRAIN, EVALUATE, REPORT, SEARCH = "train", "evaluate", "report", "search"
DESCRIPTIONS = {
    TRAIN: "Training runs (python -m training.run): config, per-epoch losses, checkpoints.",
    EVALUATE: "Evaluation runs: the paper's tagging and retrieval metrics (docs/evaluation.md) per model, "
              "sigma snapshot and frequency baseline; compare P@10 per granularity here.",
    REPORT: "The report (python -m training.report): tables beside the paper's numbers, figures.",
    SEARCH: "Indexed galleries for python -m serving.search: photos, index kind, the models that score them.",
}

#: Runs started while this environment variable names a group (``make demo`` sets it to ``demo <time>``)
#: are nested, in every experiment, under one parent run of that name: the UI then shows one demo's
#: runs together, and selecting a parent's children compares them in the chart view.
GROUP_ENV = "LOCSENS_RUN_GROUP"
GROUP_TAG, GROUP_PARENT_TAG, PARENT_TAG = "locsens.group", "locsens.group_parent", "mlflow.parentRunId"
#: On a run, the same tag is its description (Markdown, on the run's page): lineage links go there.
NOTE_TAG = DESCRIPTION_TAG
_GROUP_NAME = re.compile(r"^[\w .:+-]{1,200}$")

#: MLflow refuses param values longer than this.
_MAX_PARAM_CHARS = 6000
_PARAM_BATCH = 100


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (MLflow params are flat strings)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def check_uri(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in tracking_uri or tracking_uri.startswith("file:"):
        raise ValueError(
            f"mlflow tracking uri {tracking_uri!r}: the file store is deprecated; use "
            "sqlite:///path/mlruns.db or an http(s):// tracking server"
        )
    return tracking_uri


def describe(name: str) -> str:
    """The one-line description of the experiment ``name`` (pipeline jobs: ``<prefix>/<job>``)."""
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    job = name.rsplit("/", 1)[-1]
    return f"Spark job {job} (spark-submit jobs/{job}.py): rows read, kept and rejected by reason, outputs."


def experiment_location(name: str, artifact_root: Optional[str], tracking_uri: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts. A local folder (the default, beside a SQLite
    store) only with a local tracking store: with a tracking server every process, on any node,
    must write to the server's artifact root (None: the server decides), not to a folder of its
    own machine. A root with a scheme (``s3://...``) is used as given."""
    if not artifact_root:
        return None
    if "://" in artifact_root:
        return f"{artifact_root.rstrip('/')}/{name.replace('/', '_')}"
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return Path(artifact_root, name.replace("/", "_")).resolve().as_uri()


def get_or_create_experiment(name: str, artifact_root: Optional[str], description: Optional[str] = None) -> str:
    """Experiment id for ``name``, creating it with an artifact location under ``artifact_root``
    (:func:`experiment_location`);
    marked as a model-training experiment with its description (``description``, else
    :func:`describe`'s; also on one made before)."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = experiment_location(name, artifact_root, mlflow.get_tracking_uri())
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it between our lookup and create
            pass
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise RuntimeError(f"mlflow: could not create experiment {name!r}")
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, DESCRIPTION_TAG: description or describe(name)}
    client = mlflow.MlflowClient()
    for key, value in wanted.items():
        if exp.tags.get(key) != value:
            _set_experiment_tag(client, exp.experiment_id, key, value)
    return exp.experiment_id


def _set_experiment_tag(client: mlflow.MlflowClient, experiment_id: str, key: str, value: str) -> None:
    """Set one experiment tag, tolerating another process that sets it at the same moment: a
    SQL store inserts a new tag, and the second insert of the same key fails on its unique
    constraint. Whoever wrote it, the tag then holds a value from one of the writers."""
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except Exception:
        if key not in client.get_experiment(experiment_id).tags:
            raise
        client.set_experiment_tag(experiment_id, key, value)   # now an update of the existing row


def log_params(params: Mapping[str, Any]) -> None:
    """Log flattened params in batches, truncating values MLflow would reject."""
    flat = {k: ("" if v is None else str(v))[:_MAX_PARAM_CHARS] for k, v in flatten(params).items()}
    items = sorted(flat.items())
    for i in range(0, len(items), _PARAM_BATCH):
        mlflow.log_params(dict(items[i:i + _PARAM_BATCH]))


@contextlib.contextmanager
def stage_run(experiment: str, run_name: str, config: Mapping[str, Any], *, tracking_uri: str,
              artifact_root: Optional[str] = None, tags: Optional[Mapping[str, str]] = None) -> Iterator[Any]:
    """One MLflow run for one stage: config as params and ``config.yaml``; yields the active run.

    Call it on rank 0 only in distributed training.
    """
    # MLflow's own progress and migration chatter is noise in job logs.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(check_uri(tracking_uri))
    experiment_id = get_or_create_experiment(experiment, artifact_root)
    tags = {**group_tags(experiment_id), **(tags or {})}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    try:
        log_params(config)
        mlflow.log_dict(dict(config), "config.yaml")
        log.info("mlflow run %s in experiment %r (%s)", run.info.run_id, experiment, tracking_uri)
        yield run
    except BaseException:
        end_run("FAILED")
        raise
    end_run("FINISHED")


def end_run(status: str) -> None:
    """End the active run; when the tracking server cannot take it, say so once (the server shows
    the run as running), so that work that ran is not failed by the server. (MLflow forgets the
    run locally before it tells the server.)"""
    run = mlflow.active_run()
    try:
        mlflow.end_run(status)
    except Exception as exc:
        log.warning("MLflow: could not mark run %s %s (%s); the tracking server shows it as running",
                    run.info.run_id if run else "?", status, first_line(exc))


# --- run groups and lineage ---------------------------------------------------------------------------

def group_name() -> Optional[str]:
    """The run group named by ``LOCSENS_RUN_GROUP``, checked (it goes into search filters)."""
    name = os.environ.get(GROUP_ENV, "").strip()
    if not name:
        return None
    if not _GROUP_NAME.match(name):
        raise ValueError(f"{GROUP_ENV}={name!r}: use letters, digits, spaces and . : + - _ (at most 200)")
    return name


def group_tags(experiment_id: str) -> dict[str, str]:
    """Tags that nest a new run under its group's parent run in ``experiment_id`` (none without a group)."""
    name = group_name()
    if name is None:
        return {}
    return {GROUP_TAG: name, PARENT_TAG: group_parent(experiment_id, name)}


def group_parent(experiment_id: str, name: str) -> str:
    """The id of the parent run of group ``name`` in the experiment, made on first use.

    Stages of one demo start in parallel processes: a lock file on this machine makes one of them
    create the parent and the others find it. (Processes on other machines sharing a tracking
    server could each create one; the UI then shows two parents of the same name.)
    """
    key = hashlib.sha1(f"{mlflow.get_tracking_uri()}|{experiment_id}|{name}".encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir(), f"locsens-run-group-{key}.lock")
    client = mlflow.MlflowClient()
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{GROUP_PARENT_TAG}` = '{name}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=name, tags={
            GROUP_PARENT_TAG: name, GROUP_TAG: name,
            NOTE_TAG: f"The runs of **{name}** in this experiment are nested below. Select them and open "
                      "the Chart view to compare their metrics side by side (retrieval/P_at_10_by_km: "
                      "P@10 against the distance threshold, one line per run)."})
        client.set_terminated(run.info.run_id)
        return run.info.run_id


def is_group_parent(run: Any) -> bool:
    return GROUP_PARENT_TAG in run.data.tags


def latest_finished_run(experiment: str) -> Optional[Any]:
    """The most recent finished run of ``experiment`` that is not a group's parent (None if none)."""
    if mlflow.get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(experiment_names=[experiment], max_results=20, order_by=["attributes.start_time DESC"],
                              filter_string="attributes.status = 'FINISHED'", output_format="list")
    return next((r for r in runs if not is_group_parent(r)), None)


def log_dataset(directory: str | os.PathLike, name: str, digest: str, context: str) -> None:
    """Record in the active run, by MLflow's dataset tracking, that it read the dataset in
    ``directory`` (shards, an embeddings export), identified by ``digest``."""
    source = resolve_dataset_source(Path(directory).resolve().as_uri())
    dataset = MetaDataset(source, name=name, digest=(digest or "unknown")[:32])
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException:
        # Several runs reading one dataset at once (ranks' evaluations, trainings on one export): a
        # SQL store looks the dataset up and inserts it if missing, and a second insert of the same
        # (experiment, name, digest) fails on its unique key. Once, the row then exists and is used.
        mlflow.log_input(dataset, context=context)


def producer() -> dict[str, str]:
    """Who is writing an output: the active run (id, experiment, name), to be stored in the output's
    manifest so that the runs that read it can link back; empty outside a run."""
    run = mlflow.active_run()
    return run_record(run.info) if run is not None else {}


def run_link(run: Mapping[str, str]) -> str:
    """A Markdown link to a run (``run_id``, ``experiment_id``, ``run_name``) in the MLflow UI."""
    name = run.get("run_name") or run["run_id"][:8]
    return f"[{name}](#/experiments/{run['experiment_id']}/runs/{run['run_id']})"


def describe_run(client: Any, run_id: str, line: str) -> None:
    """Append ``line`` to a run's description (Markdown, shown on its page), once."""
    note = client.get_run(run_id).data.tags.get(NOTE_TAG, "")
    if line not in note.split("\n"):
        client.set_tag(run_id, NOTE_TAG, f"{note}\n{line}".strip())


def link_runs(client: Any, *, upstream: Mapping[str, str], downstream: Mapping[str, str], what: str) -> None:
    """Record that run ``downstream`` used ``what`` made by run ``upstream``: a tag
    ``lineage.<what>`` = upstream id and linked lines in both runs' descriptions."""
    if not upstream.get("run_id") or not downstream.get("run_id"):
        return
    try:
        client.get_run(upstream["run_id"])
    except Exception:    # made in another tracking store (or deleted since): nothing to link to
        log.info("lineage: %s came from run %s, not in this tracking store", what, upstream["run_id"])
        return
    client.set_tag(downstream["run_id"], f"lineage.{what}", upstream["run_id"])
    describe_run(client, downstream["run_id"], f"Uses the {what} of {run_link(upstream)}.")
    describe_run(client, upstream["run_id"], f"Its {what} used by {run_link(downstream)}.")


def run_record(info: Any) -> dict[str, str]:
    """What a link to a run needs, from its ``RunInfo``."""
    return {"run_id": info.run_id, "experiment_id": info.experiment_id, "run_name": info.run_name or ""}


# --- a tracking server that goes away ------------------------------------------------------------------

def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class MetricBuffer:
    """Metrics on their way to a tracking server that may be unreachable for a while.

    ``send(metrics, step, timestamp_ms)`` logs one batch (and raises when the server cannot take
    it), stamped with the time it was logged here: a batch the server stored just before the
    connection broke is then sent again identical, and the store keeps one copy. While the
    server is down, batches are kept in order, one warning says so, and sending is tried again at
    most every ``retry_seconds``, so that the work logging them never waits in between; the first
    send that works sends everything kept, and a second warning says the server is back.
    :meth:`close` waits up to ``timeout`` seconds for the server, then writes what is left to
    ``unsent_path`` (JSON lines: metrics, step, time) with one warning. Used by the training logger
    (training/loggers.py) and the pipeline jobs (pipeline/stage.py).
    """

    def __init__(self, send: Callable[[dict[str, float], Optional[int], int], None], *, where: str,
                 retry_seconds: float = 30.0, unsent_path: Optional[str] = None):
        self.send, self.where = send, where
        self.retry_seconds, self.unsent_path = float(retry_seconds), unsent_path
        self.pending: list[tuple[dict[str, float], Optional[int], float]] = []
        self.down_since: Optional[float] = None
        self._next_try = 0.0

    def log(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self.pending.append((dict(metrics), step, time.time()))
        if self.down_since is None or time.monotonic() >= self._next_try:
            self.flush()

    def flush(self) -> bool:
        """Send what is kept, oldest first; False (server down) at the first failure."""
        while self.pending:
            metrics, step, logged = self.pending[0]
            try:
                self.send(metrics, step, int(logged * 1000))
            except Exception as exc:       # connection refused, timeouts, 5xx: MLflow raises several kinds
                self.went_down(exc)
                return False
            self.pending.pop(0)
        if self.down_since is not None:
            log.warning("MLflow tracking server %s is back after %.0f s: the metrics kept meanwhile were sent",
                        self.where, time.monotonic() - self.down_since)
            self.down_since = None
        return True

    def went_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning("MLflow tracking server %s unreachable (%s): the work goes on; metrics are kept and sent "
                        "when it is back (tried every %.0f s)", self.where, first_line(exc), self.retry_seconds)
        self._next_try = now + self.retry_seconds

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds to send what is kept; True when nothing is left unsent."""
        deadline = time.monotonic() + timeout
        while self.pending and not self.flush() and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        if not self.pending:
            return True
        rows = [{"metrics": m, "step": s, "time": t} for m, s, t in self.pending]
        if self.unsent_path:
            path = Path(self.unsent_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as out:
                out.writelines(json.dumps(r) + "\n" for r in rows)
        log.warning("MLflow tracking server %s still unreachable after %.0f s: %d metric batches not sent%s",
                    self.where, timeout, len(rows), f"; kept in {self.unsent_path}" if self.unsent_path else "")
        self.pending = []
        return False
