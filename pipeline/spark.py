"""One way to get a SparkSession, for the jobs and for the tests.

Under ``spark-submit`` the master and resources come from spark-submit's own flags; outside it
(tests, ``python jobs/x.py``) we fall back to ``local[*]``. Settings that every job wants
(quiet logs, UTC, no UI in tests) live here instead of in each job.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from pyspark.sql import SparkSession

#: JVM options for batch Spark work: the parallel (throughput) collector, whose pauses do not
#: matter to a batch job, where G1's concurrent bookkeeping cost ~10% of wall time on 2 cores.
#: ``make pipeline`` passes the same flag to spark-submit (SPARK_JAVA_OPTS).
BATCH_JVM_OPTIONS = "-XX:+UseParallelGC"


def spark_session(app_name: str, master: Optional[str] = None, *, ui: bool = True,
                  shuffle_partitions: Optional[int] = None, log_level: str = "WARN") -> SparkSession:
    """Create (or return the running) SparkSession with the project's defaults."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Workers must run the same interpreter as the driver (the project venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    elif not _under_spark_submit():
        builder = builder.master("local[*]")
    builder = (
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", str(ui).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "true")
        # Outside spark-submit the JVM starts here: quiet logs, the throughput collector.
        .config("spark.driver.extraJavaOptions", f"{BATCH_JVM_OPTIONS} -Dlog4j2.level=warn")
    )
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(log_level)
    return spark


def _under_spark_submit() -> bool:
    """spark-submit starts the Python driver with a gateway to its JVM (and its ``--master``)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
