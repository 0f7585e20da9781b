"""What every pipeline job does around its transform: Spark session, MLflow run, timings, checks."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import mlflow
from omegaconf import DictConfig
from pyspark.sql import SparkSession

from common.markdown import table
from common.tracking import MetricBuffer, first_line, stage_run
from pipeline import io
from pipeline.config import PipelineError, require_int, to_dict
from pipeline.spark import auto_shuffle_partitions, spark_session, user_settings

log = logging.getLogger("pipeline")


def start_spark(cfg: DictConfig, app: str, inputs: Sequence[str] = (),
                settings: Optional[Mapping[str, object]] = None) -> SparkSession:
    """The job's session: the job's own ``settings``, then conf/pipeline.yaml's ``spark.conf``
    over them, all as defaults under what the user gave spark-submit (``--conf``) or
    ``spark-defaults.conf``. ``spark.shuffle_partitions: auto``
    sizes shuffles by the master: the sample's ``local_shuffle_partitions`` on a local one, and from
    the size of ``inputs`` (the job's input files) on a cluster."""
    setting = cfg.spark.shuffle_partitions
    if setting != "auto" and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 1):
        raise PipelineError(f"setting spark.shuffle_partitions={setting!r}: expected auto or an integer >= 1")
    fixed = None if setting == "auto" else setting
    user_gave = "spark.sql.shuffle.partitions" in user_settings()
    spark = spark_session(f"locsens-{app}", master=cfg.spark.master, shuffle_partitions=fixed,
                          defaults={**(settings or {}), **{str(k): v for k, v in (cfg.spark.conf or {}).items()}})
    if fixed is None and not user_gave:
        sc = spark.sparkContext
        if sc.master.startswith("local"):
            n, why = require_int(cfg, "spark.local_shuffle_partitions", minimum=1), "a local master"
        else:
            size = io.input_bytes(spark, [p for p in inputs if p])
            n = auto_shuffle_partitions(size, sc.defaultParallelism,
                                        require_int(cfg, "spark.partition_mb", minimum=1) << 20)
            why = f"{size / 2**30:.2f} GiB of input rows, {sc.defaultParallelism} cores"
        spark.conf.set("spark.sql.shuffle.partitions", str(n))
        log.info("%s: spark.sql.shuffle.partitions=%d (spark.shuffle_partitions=auto: %s)", app, n, why)
    return spark


class Stage:
    """The live MLflow run of a job, with helpers for metrics, timings and small artifacts.

    Metrics go through a :class:`~common.tracking.MetricBuffer`: a tracking server that goes away
    mid-job delays them (one warning) instead of failing the job; artifacts it cannot take are
    reported and skipped (the job's outputs hold the same tables)."""

    def __init__(self, name: str, *, where: str = "", retry_seconds: float = 30.0):
        self.name = name
        self.metrics: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self.buffer = MetricBuffer(lambda m, step, ms: mlflow.log_metrics(m, step=step, timestamp=ms), where=where,
                                   retry_seconds=retry_seconds)

    def metric(self, key: str, value: float) -> None:
        self.metrics[key] = float(value)
        self.buffer.log({key.replace("@", "_at_"): float(value)})

    def metrics_from(self, values: Mapping[str, float], prefix: str = "") -> None:
        for k, v in values.items():
            self.metric(f"{prefix}{k}", v)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.metric(f"seconds/{step}", time.perf_counter() - t)
        log.info("%s: %s took %.1fs", self.name, step, time.perf_counter() - t)

    def artifact_json(self, obj: Any, name: str) -> None:
        self.artifact_text(json.dumps(obj, indent=2, sort_keys=True, default=str), name)

    def artifact_text(self, text: str, name: str) -> None:
        try:
            mlflow.log_text(text, name)
        except Exception as exc:
            log.warning("%s: artifact %s not recorded in MLflow (%s)", self.name, name, first_line(exc))


#: Settings the project or a job chooses for speed (pipeline/spark.py, the jobs' ``settings``),
#: recorded with the run so that runs compared in MLflow say what they ran with.
TUNED_SETTINGS: tuple[str, ...] = ("spark.sql.inMemoryColumnarStorage.compressed",
                                   "spark.sql.optimizer.windowGroupLimitThreshold")


def log_effective_spark_settings() -> None:
    """What Spark actually ran with (after spark-submit's flags, spark-defaults.conf and our
    defaults), as ``effective.<key>`` parameters of the job's run."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        return
    sc = spark.sparkContext
    tuned = {f"effective.{k}": spark.conf.get(k, None) for k in TUNED_SETTINGS}
    mlflow.log_params({"effective.spark.master": sc.master,
                       "effective.spark.sql.shuffle.partitions": spark.conf.get("spark.sql.shuffle.partitions"),
                       "effective.spark.default.parallelism": sc.defaultParallelism,
                       **{k: v for k, v in tuned.items() if v is not None}})


@contextlib.contextmanager
def stage(cfg: DictConfig, name: str) -> Iterator[Stage]:
    """One MLflow run in experiment ``<prefix>/<name>`` with the resolved config and total time."""
    config = to_dict(cfg)
    with stage_run(f"{cfg.mlflow.experiment_prefix}/{name}", name, config,
                   tracking_uri=cfg.paths.mlflow_tracking_uri,
                   artifact_root=cfg.paths.mlflow_artifact_root) as _run:
        st = Stage(name, where=cfg.paths.mlflow_tracking_uri, retry_seconds=cfg.mlflow.get("retry_seconds", 30))
        log_effective_spark_settings()
        try:
            yield st
        finally:
            st.metric("seconds/total", time.perf_counter() - st._t0)
            st.buffer.close(float(cfg.mlflow.get("flush_timeout", 120)))


def check_conservation(stage_name: str, n_in: int, parts: Mapping[str, int]) -> None:
    """Input rows must equal the sum of output rows; log it, and stop the job when they differ.

    Jobs call it on counts read back from their staged outputs, before publishing them
    (:func:`pipeline.io.staged_outputs`), so a failure publishes nothing.
    """
    total = sum(parts.values())
    detail = " + ".join(f"{k} {v:,}" for k, v in parts.items())
    if total != n_in:
        raise PipelineError(f"{stage_name}: {n_in:,} input rows but {detail} = {total:,} output rows")
    log.info("%s: %s input rows = %s", stage_name, f"{n_in:,}", detail)


#: The signature of :func:`check_conservation`; jobs take one as ``check`` (tests pass a failing one).
ConservationCheck = Callable[[str, int, Mapping[str, int]], None]


def markdown_table(rows: list[Mapping[str, Any]], columns: list[str]) -> str:
    """A table of records, floats to two decimals."""
    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    return table(columns, [[fmt(r.get(c, "")) for c in columns] for r in rows])
