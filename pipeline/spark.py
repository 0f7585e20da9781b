"""One way to get a SparkSession, for the jobs and for the tests.

Under ``spark-submit`` the master and resources come from spark-submit's own flags; outside it
(tests, ``python jobs/x.py``) we fall back to ``local[*]``. The project's settings (quiet logs,
UTC, the sample's small shuffle, ``spark.conf`` of conf/pipeline.yaml) are *defaults*: a setting
the user gave Spark itself, through ``spark-submit --conf`` or ``spark-defaults.conf``, wins.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional

import pyspark
from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from pipeline.config import PipelineError

#: The oldest Spark the jobs run on: the parser uses Spark 4's ``try_url_decode``,
#: ``is_valid_utf8``, ``make_valid_utf8`` and ``Column.try_cast``. Under spark-submit the
#: cluster's own pyspark (``$SPARK_HOME/python``) is the one imported, whatever pip installed.
MIN_SPARK = (4, 0)

#: JVM options for batch Spark work: the parallel (throughput) collector, whose pauses do not
#: matter to a batch job, where G1's concurrent bookkeeping cost ~10% of wall time on 2 cores.
#: ``make pipeline`` passes the same flag to spark-submit (SPARK_JAVA_OPTS).
BATCH_JVM_OPTIONS = "-XX:+UseParallelGC"


def spark_session(app_name: str, master: Optional[str] = None, *, ui: bool = True,
                  shuffle_partitions: Optional[int] = None, defaults: Optional[Mapping[str, object]] = None,
                  log_level: str = "WARN") -> SparkSession:
    """Create (or return the running) SparkSession; the project's settings apply where the user's
    Spark configuration says nothing (:func:`user_settings`)."""
    require_spark(pyspark.__version__, f"pyspark imported from {Path(pyspark.__file__).parent}")
    submitted = _under_spark_submit()
    if master is None and not submitted:
        master = "local[*]"
    if master is not None and master.startswith("local"):
        # One machine: bind to loopback, and run Python workers with the driver's interpreter. On a
        # cluster neither is ours to choose (the driver must be reachable; executors have their own
        # Python, set with spark.pyspark.python or PYSPARK_PYTHON).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    ours: dict[str, object] = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": str(ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        # The jobs cache a table to read it back once or twice in the same job (clean_metadata's
        # classified lines, build_vocab's filtered images); compressing the cached columns cost
        # more CPU than those reads save. Caches spill to local disk when memory runs short.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        # Outside spark-submit the JVM starts here: quiet logs, the throughput collector.
        "spark.driver.extraJavaOptions": f"{BATCH_JVM_OPTIONS} -Dlog4j2.level=warn",
    }
    if shuffle_partitions is not None:
        ours["spark.sql.shuffle.partitions"] = shuffle_partitions
    ours.update(defaults or {})
    given = user_settings()
    builder = SparkSession.builder.appName(app_name)
    if master is not None and "spark.master" not in given:
        builder = builder.master(master)
    for key, value in ours.items():
        if key not in given:
            builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    require_spark(spark.version, f"the Spark JVM of master {spark.sparkContext.master}")
    spark.sparkContext.setLogLevel(log_level)
    return spark


def auto_shuffle_partitions(input_bytes: int, cores: int, partition_bytes: int) -> int:
    """Shuffle partitions for a cluster job: one per ``partition_bytes`` of input rows, at least two
    per core. Adaptive execution (on) merges partitions that turn out small, so erring high costs
    little; too few at 100M rows makes a handful of huge, spilling tasks."""
    return max(2 * max(cores, 1), -(-max(input_bytes, 0) // max(partition_bytes, 1)))


def require_spark(version: str, where: str) -> None:
    """Stop with one line when ``version`` (of ``where``) is older than :data:`MIN_SPARK`: an
    older Spark would otherwise fail mid-job on a missing function."""
    try:
        found = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        raise PipelineError(f"cannot read the Spark version {version!r} of {where}; "
                            f"the jobs need Spark >= {'.'.join(map(str, MIN_SPARK))}") from None
    if found < MIN_SPARK:
        need = ".".join(map(str, MIN_SPARK))
        raise PipelineError(f"Spark {version} ({where}) is too old: the jobs need Spark >= {need} "
                            f"(they use Spark 4's try_url_decode, is_valid_utf8 and try_cast); submit them "
                            f"with a Spark >= {need} spark-submit, or pip install 'pyspark>={need},<4.4'")


def user_settings() -> dict[str, str]:
    """The Spark settings the user gave Spark itself: under spark-submit, the driver's SparkConf
    (``--conf``, ``--master``, ``spark-defaults.conf``); otherwise ``spark-defaults.conf`` from
    ``SPARK_CONF_DIR`` (or ``SPARK_HOME/conf``)."""
    if _under_spark_submit():
        SparkContext._ensure_initialized()   # connects to spark-submit's JVM, whose properties hold them
        return dict(SparkConf().getAll())
    folder = os.environ.get("SPARK_CONF_DIR") or (Path(os.environ["SPARK_HOME"]) / "conf"
                                                  if os.environ.get("SPARK_HOME") else None)
    path = Path(folder) / "spark-defaults.conf" if folder else None
    if path is None or not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            out[parts[0]] = parts[1].strip()
    return out


def _under_spark_submit() -> bool:
    """spark-submit starts the Python driver with a gateway to its JVM (and its ``--master``)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
