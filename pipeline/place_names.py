"""The place-name list (the supplement; docs/method.md): continent, country, region and town names.

The supplement gathers "all the continents, countries, regions and towns names in YFCC100M", so
the list is built from every well-formed ``yfcc100m_places`` record (not only the kept photos')
and from every entry of the four levels (not only the first of each): a UK record's England as
well as United Kingdom, a County as well as the State above it. Continents come from the
countries through the GeoNames table. Names are normalised exactly like tags, so that evaluation
can drop place tags from ground truth and predictions by string (or vocabulary index) equality.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline import yfcc
from pipeline.parse import decode, normalize_tag, place_entries

LEVELS: tuple[str, ...] = ("continent", "country", "region", "town")
#: Place types of ``yfcc100m_places`` entries -> the level their names are listed at.
LEVEL_OF_TYPE: dict[str, str] = {
    "Town": "town", "Country": "country", **{t: "region" for t in (*yfcc.REGION_PLACE_TYPES, "County")},
}


def place_names(places: DataFrame, continents: DataFrame) -> DataFrame:
    """Distinct ``name, level`` pairs of all places records (a name may name several levels).

    ``places`` are the ``yfcc100m_places`` lines split by :func:`pipeline.parse.split_places_lines`
    (the same split the per-photo levels come from), ``continents`` the
    ``country, continent`` table of :func:`pipeline.geography.continent_table`. Entries are reduced
    to distinct (encoded name, level) pairs first, which partial aggregation does per partition
    before any shuffle, so decoding, the continent join and normalising run once per distinct place.
    """
    types = F.create_map(*[F.lit(x) for pair in LEVEL_OF_TYPE.items() for x in pair])
    entries = place_entries(places).select("name", types[F.col("type")].alias("level"))
    # No distinct right after decoding: Spark would merge it with this one and decode every entry.
    raw = entries.where(F.col("level").isNotNull()).distinct().select(decode(F.col("name")).alias("raw"), "level")
    with_continent = raw.join(continents, (F.col("level") == "country") & (F.col("raw") == F.col("country")), "left")
    pairs = F.array(F.struct(F.col("raw"), F.col("level")),
                    F.struct(F.col("continent").alias("raw"), F.lit("continent").alias("level")))
    exploded = with_continent.select(F.explode(pairs).alias("p")).select("p.raw", "p.level")
    names = exploded.where(F.col("raw").isNotNull()).select(
        normalize_tag(F.col("raw"), encoded=False).alias("name"), "level")
    return names.where(F.col("name").isNotNull()).distinct()


def place_tag_ids(vocab: DataFrame, names: DataFrame) -> DataFrame:
    """Vocabulary indices (``index``) whose tag is a place name."""
    return vocab.join(names.select(F.col("name").alias("tag")).distinct(), "tag", "left_semi").select("index")
