"""YFCC100M lines as Spark columns: the column-expression twin of :func:`pipeline.yfcc.parse_line`.

Built only from Spark's built-in functions (split, try_cast, try_url_decode, regexp_replace,
higher-order array functions), so parsing runs in the JVM at full speed, with no Python in the
row path. Layouts, place types, markers and reject reason names come from :mod:`pipeline.yfcc`;
the tests check that these expressions agree with the pure-Python parser on real lines.
"""
from __future__ import annotations

from typing import Optional

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline import yfcc

#: Reject reasons raised while parsing one dataset line, in the order parse_line checks them.
PARSE_REASONS: tuple[str, ...] = (
    "empty_line", "wrong_column_count", "bad_coordinates", "coordinates_out_of_range",
    "bad_accuracy", "bad_marker", "bad_photo_id", "bad_line_number", "bad_date_uploaded",
)


def decode(col: Column) -> Column:
    """Form-URL-decode like ``unquote_plus``: ``+`` is a space, ``%XX`` UTF-8, stray ``%`` kept.

    Java's decoder refuses a ``%`` not followed by two hex digits where Python keeps it, so such
    a ``%`` is escaped first; anything still undecodable falls back to the ``+``-decoded text.
    """
    escaped = F.regexp_replace(col, r"%(?![0-9A-Fa-f]{2})", "%25")
    return F.coalesce(F.try_url_decode(escaped), F.regexp_replace(col, r"\+", " "))


def normalize_tag(tag: Column, *, encoded: bool = True) -> Column:
    """Decode, lower-case and remove white space (SPEC 2.2); digit and empty tags become null."""
    text = decode(tag) if encoded else tag
    text = F.regexp_replace(F.lower(text), r"(?U)\s+", "")
    return F.when((text != "") & ~text.rlike(r"\p{Nd}"), text)


def normalized_tags(user_tags: Column) -> Column:
    """Distinct normalised tags of a ``user_tags`` field, first-occurrence order."""
    raw = F.filter(F.split(user_tags, ",", -1), lambda t: t != "")
    norm = F.transform(raw, lambda t: normalize_tag(t))
    return F.array_distinct(F.filter(norm, lambda t: t.isNotNull()))


def _strip_line_end(value_col: str) -> Column:
    """The line without trailing CR/LF (Hadoop's reader leaves a CR before a missing final LF)."""
    return F.expr(f"trim(TRAILING '\\r\\n' FROM `{value_col}`)")


def _int(col: Column) -> Column:
    return col.try_cast("bigint")


def _first_reason(*checks: tuple[Column, str]) -> Column:
    expr = None
    for cond, reason in checks:
        expr = F.when(cond, F.lit(reason)) if expr is None else expr.when(cond, F.lit(reason))
    return expr  # type: ignore[return-value]


def parse_lines(lines: DataFrame, layout: int, *, value_col: str = "value") -> DataFrame:
    """Typed narrow columns of each dataset line plus ``reason`` (null when the line parses).

    Keeps one row per input line: a line that cannot be a record gets a reject reason instead
    of being dropped. Free text not needed downstream (title, description, ...) is not decoded.
    """
    if layout not in yfcc.LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {sorted(yfcc.LAYOUTS)}")
    names = yfcc.LAYOUTS[layout]
    pos = {name: i for i, name in enumerate(names)}
    line = _strip_line_end(value_col)
    df = lines.withColumn("_line", line).withColumn("_f", F.split("_line", "\t", -1))

    def field(name: str) -> Column:
        return F.get(F.col("_f"), pos[name])

    lon_s, lat_s, acc_s = field("longitude"), field("latitude"), field("accuracy")
    lon, lat = lon_s.try_cast("double"), lat_s.try_cast("double")
    both_empty = (lon_s == "") & (lat_s == "")
    unparsable = lon.isNull() | lat.isNull()
    placeholder = (lon == yfcc.PLACEHOLDER_COORDINATE) & (lat == yfcc.PLACEHOLDER_COORDINATE)
    # NaN is larger than every number in Spark, so it fails the upper bounds like Python's compare.
    out_of_range = ~((lon >= -180.0) & (lon <= 180.0) & (lat >= -90.0) & (lat <= 90.0))
    has_geo = ~both_empty & ~unparsable & ~placeholder
    marker = _int(field("marker"))
    photo_id = _int(field("photo_id"))
    date_uploaded = _int(field("date_uploaded"))
    line_number = _int(field("line_number")) if "line_number" in pos else F.lit(None).cast("bigint")
    bad_line_number = (field("line_number") != "") & line_number.isNull() if "line_number" in pos else F.lit(False)

    reason = _first_reason(
        (F.col("_line") == "", "empty_line"),
        (F.size("_f") != layout, "wrong_column_count"),
        (~both_empty & unparsable, "bad_coordinates"),
        (has_geo & out_of_range, "coordinates_out_of_range"),
        (has_geo & (acc_s != "") & _int(acc_s).isNull(), "bad_accuracy"),
        (marker.isNull() | ~marker.isin(yfcc.MARKER_PHOTO, yfcc.MARKER_VIDEO), "bad_marker"),
        (photo_id.isNull(), "bad_photo_id"),
        (bad_line_number, "bad_line_number"),
        ((field("date_uploaded") != "") & date_uploaded.isNull(), "bad_date_uploaded"),
    )
    ok = reason.isNull()

    def typed(col: Column) -> Column:
        return F.when(ok, col)

    cols = [
        typed(photo_id).alias("photo_id"),
        typed(line_number).alias("line_number"),
        typed(field("photo_hash") if "photo_hash" in pos else F.lit(None).cast("string")).alias("photo_hash"),
        typed(field("user_nsid")).alias("user_nsid"),
        typed(F.try_to_timestamp(F.substring(field("date_taken"), 1, 19),
                                 F.lit("yyyy-MM-dd HH:mm:ss"))).alias("date_taken"),
        typed(date_uploaded).alias("date_uploaded"),
        typed(F.when(has_geo, lat)).alias("latitude"),
        typed(F.when(has_geo, lon)).alias("longitude"),
        typed(F.when(has_geo & (acc_s != ""), _int(acc_s).cast("int"))).alias("accuracy"),
        typed(field("download_url")).alias("download_url"),
        typed(marker.cast("int")).alias("marker"),
        typed(F.size(F.filter(F.split(field("user_tags"), ",", -1), lambda t: t != ""))).alias("n_raw_tags"),
        typed(normalized_tags(field("user_tags"))).alias("tags"),
        reason.alias("reason"),
    ]
    keep = [c for c in lines.columns if c != value_col]
    return df.select(*keep, *cols, F.xxhash64("_line").alias("line_hash"), F.col("_line").alias(value_col))


def detect_layout(first_lines: list[str]) -> Optional[int]:
    """The layout most of the given lines have (by field count), or None if none has a layout."""
    counts: dict[int, int] = {}
    for line in first_lines:
        n = len(yfcc.split_line(line))
        if n in yfcc.LAYOUTS:
            counts[n] = counts.get(n, 0) + 1
    return max(counts, key=lambda n: (counts[n], n)) if counts else None


# --- places --------------------------------------------------------------------------------------

def parse_places_lines(lines: DataFrame, *, value_col: str = "value") -> DataFrame:
    """``photo_id``, ``town``, ``region``, ``country`` and ``places_reason`` of places lines.

    Mirrors :func:`pipeline.yfcc.parse_places` + :func:`pipeline.yfcc.place_levels`: split on
    ``,`` then ``:``, decode names, take the first Town, region-level and Country entries.
    """
    f = F.split(_strip_line_end(value_col), "\t", -1)
    entries = F.transform(F.filter(F.split(F.get(f, 1), ",", -1), lambda e: e != ""),
                          lambda e: F.split(e, ":", -1))
    bad_entry = F.exists(entries, lambda p: (F.size(p) != 3) | F.get(p, 0).try_cast("bigint").isNull())
    photo_id = _int(F.get(f, 0))
    reason = (F.when(F.size(f) != 2, F.lit("bad_places_line"))
              .when(photo_id.isNull(), F.lit("bad_places_line"))
              .when(bad_entry, F.lit("bad_place_entry")))

    def first_of(types: tuple[str, ...]) -> Column:
        match = F.filter(entries, lambda p: F.get(p, 2).isin(*types))
        return F.when(reason.isNull() & (F.size(match) > 0), decode(F.get(F.get(match, 0), 1)))

    return lines.select(
        photo_id.alias("photo_id"),
        first_of(("Town",)).alias("town"),
        first_of(yfcc.REGION_PLACE_TYPES).alias("region"),
        first_of(("Country",)).alias("country"),
        reason.alias("places_reason"),
    )


def parse_hash_lines(lines: DataFrame, *, value_col: str = "value") -> DataFrame:
    """``photo_id`` and ``photo_hash`` of ``yfcc100m_hash`` lines (malformed lines: null id)."""
    f = F.split(_strip_line_end(value_col), "\t", -1)
    ok = (F.size(f) == 2) & (F.get(f, 1) != "")
    return lines.select(F.when(ok, _int(F.get(f, 0))).alias("photo_id"),
                        F.when(ok, F.get(f, 1)).alias("photo_hash"))
