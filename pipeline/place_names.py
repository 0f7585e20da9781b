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
    """Distinct ``name, level`` pairs over the clean table (a name may name several levels).

    Photos are first reduced to their distinct (continent, country, region, town) places, a
    cheap aggregate with few keys, so exploding and normalising run once per place, not per photo.
    """
    places = clean.select(*LEVELS).distinct()
    pairs = F.array(*[F.struct(F.col(lv).alias("raw"), F.lit(lv).alias("level")) for lv in LEVELS])
    raw = places.select(F.explode(pairs).alias("p")).select("p.raw", "p.level").distinct()
    names = raw.select(normalize_tag(F.col("raw"), encoded=False).alias("name"), "level")
    return names.where(F.col("name").isNotNull()).distinct()


def place_tag_ids(vocab: DataFrame, names: DataFrame) -> DataFrame:
    """Vocabulary indices (``index``) whose tag is a place name."""
    return vocab.join(names.select(F.col("name").alias("tag")).distinct(), "tag", "left_semi").select("index")
