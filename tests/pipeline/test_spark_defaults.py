"""What the jobs need of Spark and what they choose for it.

The jobs need Spark >= 4.0 (the parser's try_url_decode, is_valid_utf8, try_cast): an older Spark,
as a cluster's own pyspark under spark-submit would be, stops the job at start with one line that
names the version, where it came from and what to do, instead of an AttributeError mid-parse.

``spark.shuffle_partitions: auto`` on a cluster sizes shuffles from the input: one partition per
``partition_mb`` of input rows, at least two per core (the cluster test checks a real cluster's
value; tests/pipeline/test_spark_settings.py the local master's and the user's own setting)."""
from __future__ import annotations

import pyspark
import pytest

from pipeline.config import PipelineError
from pipeline.spark import MIN_SPARK, auto_shuffle_partitions, require_spark


@pytest.mark.parametrize("version", ["3.5.3", "3.4.0", "2.4.8"])
def test_an_older_spark_stops_with_one_line(version):
    with pytest.raises(PipelineError) as err:
        require_spark(version, "pyspark imported from /opt/spark/python/pyspark")
    message = str(err.value)
    assert "\n" not in message
    assert f"Spark {version}" in message and "/opt/spark/python/pyspark" in message
    assert ">= 4.0" in message and "spark-submit" in message


@pytest.mark.parametrize("version", ["4.0.0", "4.3.1", "4.1.0-SNAPSHOT", "5.0.0"])
def test_spark_4_and_later_pass(version):
    require_spark(version, "x")


def test_an_unreadable_version_is_named():
    with pytest.raises(PipelineError, match="'custom-build'"):
        require_spark("custom-build", "x")


def test_the_installed_pyspark_is_new_enough():
    require_spark(pyspark.__version__, "the test environment")
    assert tuple(int(p) for p in pyspark.__version__.split(".")[:2]) >= MIN_SPARK


MIB = 1 << 20


@pytest.mark.parametrize("input_bytes, cores, expected", [
    (0, 4, 8),                          # nothing to size by: two per core
    (100 * MIB, 64, 128),               # small input on a big cluster: still two per core
    (50 * 1024 * MIB, 64, 400),         # YFCC100M's ~50 GiB of lines: one per 128 MiB
    (50 * 1024 * MIB + 1, 64, 401),     # a part-partition rounds up
])
def test_auto_shuffle_partitions_follow_the_input(input_bytes, cores, expected):
    assert auto_shuffle_partitions(input_bytes, cores, 128 * MIB) == expected
