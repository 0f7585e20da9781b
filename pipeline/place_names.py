"""The place-name list (supplement; SPEC 2.6): continent, country, region and town names.

Normalised exactly like tags, so that evaluation can drop place tags from ground truth and
predictions by string (or vocabulary index) equality.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline.parse import normalize_tag

LEVELS: tuple[str, ...] = ("continent", "country", "region", "town")


def place_names(clean: DataFrame) -> DataFrame:
    """Distinct ``name, level`` pairs over the clean table (a name may name several levels)."""
    parts = [clean.select(normalize_tag(F.col(level), encoded=False).alias("name"), F.lit(level).alias("level"))
             for level in LEVELS]
    df = parts[0]
    for p in parts[1:]:
        df = df.unionByName(p)
    return df.where(F.col("name").isNotNull()).distinct()


def place_tag_ids(vocab: DataFrame, names: DataFrame) -> DataFrame:
    """Vocabulary indices (``index``) whose tag is a place name."""
    return vocab.join(names.select(F.col("name").alias("tag")).distinct(), "tag", "left_semi").select("index")
