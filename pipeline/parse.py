"""YFCC100M lines as Spark columns: the column-expression twin of :func:`pipeline.yfcc.parse_line`.

Built only from Spark's built-in functions (split, try_cast, try_url_decode, regexp_replace,
higher-order array functions), so parsing runs in the JVM at full speed, with no Python in the
row path. Layouts, place types, markers and reject reason names come from :mod:`pipeline.yfcc`;
the tests check that these expressions agree with the pure-Python parser on real lines.
"""
from __future__ import annotations

import re
from typing import Optional

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline import yfcc

#: Reject reasons raised while parsing one dataset line, in the order parse_line checks them.
PARSE_REASONS: tuple[str, ...] = (
    "empty_line", "invalid_utf8", "wrong_column_count", "bad_coordinates", "coordinates_out_of_range",
    "bad_accuracy", "bad_marker", "bad_photo_id", "bad_line_number", "bad_date_uploaded",
)


def decode(col: Column) -> Column:
    """Form-URL-decode like ``unquote_plus``: ``+`` is a space, ``%XX`` UTF-8, stray ``%`` kept.

    Java's decoder refuses a ``%`` not followed by two hex digits where Python keeps it, so such
    a ``%`` is escaped first; anything still undecodable falls back to the ``+``-decoded text.
    Text without ``%`` (most tags) only needs ``+`` -> space, which is much cheaper.
    """
    plus = F.replace(col, F.lit("+"), F.lit(" "))
    escaped = F.regexp_replace(col, r"%(?![0-9A-Fa-f]{2})", "%25")
    return F.when(col.contains("%"), F.coalesce(F.try_url_decode(escaped), plus)).otherwise(plus)


def _ascii(text: Column) -> Column:
    return F.length(text) == F.octet_length(text)


#: ASCII white space as Python's ``\s`` sees it (space, tab, LF, VT, FF, CR and 0x1c-0x1f), as a regex
#: class: ``regexp_replace`` with it is about 2.5x faster than ``translate``, which looks every
#: character up in a map of strings.
_WHITE_SPACE_CLASS = r" \t\n\x0b\f\r\x1c-\x1f"


def _remove_space(text: Column) -> Column:
    """Drop white space as Python's ``\\s`` does; ASCII text takes the cheaper ASCII-class path."""
    return F.when(_ascii(text), F.regexp_replace(text, f"[{_WHITE_SPACE_CLASS}]", "")) \
        .otherwise(F.regexp_replace(text, r"(?U)[\s\x1c-\x1f]+", ""))


def _has_digit(text: Column) -> Column:
    """Any (Unicode) decimal digit, like Python's ``\\d`` on str."""
    return text.rlike(r"\p{Nd}")


def normalize_tag(tag: Column, *, encoded: bool = True) -> Column:
    """Decode, lower-case and remove white space (docs/method.md, tag normalisation); digit and empty tags become null."""
    text = _remove_space(F.lower(decode(tag) if encoded else tag))
    return F.when((text != "") & ~_has_digit(text), text)


_SEP = "\u0000"  # stands for the "," between raw tags while an encoded field is decoded whole


def _stages(df: DataFrame, steps: list[tuple[str, Column]]) -> DataFrame:
    """Add columns one projection at a time.

    A value used several times by the next step (in CASE branches, where Spark does not
    eliminate common subexpressions) is then an attribute, computed once, not an inlined copy
    of its whole expression. Spark keeps such projections apart instead of collapsing them.
    """
    for name, col in steps:
        df = df.withColumn(name, col)
    return df


def _drop_digit_tags(text: Column, sep: str) -> Column:
    """Remove every ``sep``-separated tag that contains a decimal digit (leaves empty tags)."""
    return F.regexp_replace(text, f"(?<=^|{sep})[^{sep}\\p{{Nd}}]*\\p{{Nd}}[^{sep}]*", "")


def with_normalized_tags(df: DataFrame, user_tags: str, out: str) -> DataFrame:
    """``df`` with ``out``: the distinct normalised tags of ``user_tags``, first-occurrence order.

    The per-character steps (decode, lower-case, white space, digit test) run once on the whole
    field instead of once per tag, so no lambda (array functions run lambdas interpreted, with
    no code generation) is in the row path. Most fields are plain ASCII without ``%``: for them
    decoding is ``+`` -> space, so one ``regexp_replace`` drops ``+`` and white space together and
    the field splits on its own commas. A field with ``%`` (or raw non-ASCII text) takes the
    full path: commas become NUL first, so a decoded ``%2C`` stays inside its tag (only a tag
    containing ``%00`` would split differently).
    """
    raw, t, full = F.col(user_tags), F.col("_tags_text"), F.col("_tags_full")
    df = _stages(df, [
        ("_tags_full", raw.contains("%") | ~_ascii(raw)),
        ("_tags_text", F.when(full, F.replace(raw, F.lit(","), F.lit(_SEP)))
         .otherwise(F.lower(F.regexp_replace(raw, f"[+{_WHITE_SPACE_CLASS}]", "")))),
        ("_tags_text", F.when(full, F.lower(decode(t))).otherwise(t)),
        ("_tags_text", F.when(full, _remove_space(t)).otherwise(t)),
        ("_tags_text", F.when(_has_digit(t), F.when(full, _drop_digit_tags(t, _SEP))
                              .otherwise(_drop_digit_tags(t, ","))).otherwise(t)),
    ])
    tags = F.split(t, F.when(full, F.lit(_SEP)).otherwise(F.lit(",")), -1)
    return df.withColumn(out, F.array_distinct(F.array_remove(tags, ""))).drop("_tags_text", "_tags_full")


def count_raw_tags(user_tags: Column) -> Column:
    return F.size(F.array_remove(F.split(user_tags, ",", -1), ""))


def _strip_line_end(text: Column | str) -> Column:
    """``text`` without trailing CR/LF (Hadoop's reader leaves a CR before a missing final LF)."""
    return F.rtrim(F.col(text) if isinstance(text, str) else text, F.lit("\r\n"))


def _int(col: Column) -> Column:
    return col.try_cast("bigint")


def _first_reason(*checks: tuple[Column, str]) -> Column:
    expr = None
    for cond, reason in checks:
        expr = F.when(cond, F.lit(reason)) if expr is None else expr.when(cond, F.lit(reason))
    return expr  # type: ignore[return-value]


def parse_lines(lines: DataFrame, layout: int, *, value_col: str = "value", line_chars: int = 2000) -> DataFrame:
    """Typed narrow columns of each dataset line plus ``reason`` (null when the line parses).

    Keeps one row per input line: a line that cannot be a record gets a reject reason instead
    of being dropped, and keeps its first ``line_chars`` characters (``line``) for debugging;
    the raw line itself is not carried further. Free text not needed downstream (title,
    description, ...) is not decoded.
    """
    if layout not in yfcc.LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {sorted(yfcc.LAYOUTS)}")
    names = yfcc.LAYOUTS[layout]
    pos = {name: i for i, name in enumerate(names)}
    # Only the last field can end in CR/LF, so only it is stripped: copying every whole line
    # to strip it would cost more than the split itself.
    value = F.col(value_col)
    df = lines.withColumn("_f", F.split(value, "\t", -1))

    def field(name: str) -> Column:
        if name not in pos:
            return F.lit(None).cast("string")
        got = F.get(F.col("_f"), pos[name])
        return _strip_line_end(got) if pos[name] == layout - 1 else got

    # Raw fields and casts, each computed once.
    df = _stages(df, [
        ("_lon_s", field("longitude")), ("_lat_s", field("latitude")), ("_acc_s", field("accuracy")),
        ("_lon", F.col("_lon_s").try_cast("double")), ("_lat", F.col("_lat_s").try_cast("double")),
        ("_marker", _int(field("marker"))), ("_photo_id", _int(field("photo_id"))),
        ("_date_uploaded_s", field("date_uploaded")), ("_date_uploaded", _int(F.col("_date_uploaded_s"))),
        ("_line_number_s", field("line_number")), ("_line_number", _int(F.col("_line_number_s"))),
        ("_acc", _int(F.col("_acc_s"))), ("_user_tags", field("user_tags")),
    ])
    lon, lat, lon_s, lat_s, acc_s = (F.col(c) for c in ("_lon", "_lat", "_lon_s", "_lat_s", "_acc_s"))
    both_empty = (lon_s == "") & (lat_s == "")
    unparsable = lon.isNull() | lat.isNull()
    no_geo_pair = (lon == yfcc.PLACEHOLDER_COORDINATE) & (lat == yfcc.PLACEHOLDER_COORDINATE)
    # NaN is larger than every number in Spark, so it fails the upper bounds like Python's compare.
    out_of_range = ~((lon >= -180.0) & (lon <= 180.0) & (lat >= -90.0) & (lat <= 90.0))
    df = df.withColumn("_has_geo", ~both_empty & ~unparsable & ~no_geo_pair)
    has_geo, marker = F.col("_has_geo"), F.col("_marker")
    df = df.withColumn("reason", _first_reason(
        # Bytes, not characters: a line of only CR/LF has as many of each, and counting the
        # characters of every whole line cost as much as splitting it.
        ((F.octet_length(value) <= 2) & (_strip_line_end(value) == ""), "empty_line"),
        # Spark carries undecodable bytes through unchanged; written out they would make
        # unreadable Parquet strings, so such a line is rejected whole, never repaired.
        (~F.is_valid_utf8(value), "invalid_utf8"),
        (F.size("_f") != layout, "wrong_column_count"),
        (~both_empty & unparsable, "bad_coordinates"),
        (has_geo & out_of_range, "coordinates_out_of_range"),
        (has_geo & (acc_s != "") & F.col("_acc").isNull(), "bad_accuracy"),
        (marker.isNull() | ~marker.isin(yfcc.MARKER_PHOTO, yfcc.MARKER_VIDEO), "bad_marker"),
        (F.col("_photo_id").isNull(), "bad_photo_id"),
        ((F.col("_line_number_s") != "") & F.col("_line_number").isNull(), "bad_line_number"),
        ((F.col("_date_uploaded_s") != "") & F.col("_date_uploaded").isNull(), "bad_date_uploaded"),
    ))
    df = with_normalized_tags(df, "_user_tags", "_tags")
    ok = F.col("reason").isNull()

    def typed(col: Column) -> Column:
        return F.when(ok, col)

    cols = [
        typed(F.col("_photo_id")).alias("photo_id"),
        typed(F.col("_line_number")).alias("line_number"),
        typed(field("photo_hash")).alias("photo_hash"),
        typed(field("user_nsid")).alias("user_nsid"),
        typed(field("date_taken")).alias("date_taken"),  # camera-local text; junk years exist
        typed(F.col("_date_uploaded")).alias("date_uploaded"),
        typed(F.when(has_geo, lat)).alias("latitude"),
        typed(F.when(has_geo, lon)).alias("longitude"),
        typed(F.when(has_geo & (acc_s != ""), F.col("_acc").cast("int"))).alias("accuracy"),
        typed(field("download_url")).alias("download_url"),
        typed(marker.cast("int")).alias("marker"),
        typed(count_raw_tags(F.col("_user_tags"))).alias("n_raw_tags"),
        typed(F.col("_tags")).alias("tags"),
        F.col("reason"),
    ]
    keep = [c for c in lines.columns if c != value_col]
    # The debugging copy of a line with undecodable bytes shows them as U+FFFD (file and
    # line_number locate the original).
    line = F.when(~ok, F.substring(_strip_line_end(F.make_valid_utf8(value)), 1, line_chars)).alias("line")
    return df.select(*keep, *cols, F.xxhash64(value).alias("line_hash"), line)


def detect_layout(first_lines: list[str]) -> Optional[int]:
    """The layout most of the given lines have (by field count), or None if none has a layout."""
    counts: dict[int, int] = {}
    for line in first_lines:
        n = len(yfcc.split_line(line))
        if n in yfcc.LAYOUTS:
            counts[n] = counts.get(n, 0) + 1
    return max(counts, key=lambda n: (counts[n], n)) if counts else None


# --- places --------------------------------------------------------------------------------------

_ENTRY = r"[+-]?\d+:[^:,]*:[^:,]*"
#: A well-formed places value: woeid:name:type entries separated by commas (empty ones allowed).
PLACES_VALUE = rf"^,*(?:{_ENTRY}(?:,+{_ENTRY})*)?,*$"


def _place_pattern(types: tuple[str, ...]) -> str:
    """The first entry of one of ``types``; group 1 is its name *with* the following ``:``.

    The kept ``:`` tells an entry with an empty name (":") from no entry at all (""), which
    ``regexp_extract`` alone cannot, without the cost of ``regexp_extract_all``. The match is
    anchored and steps over whole entries (lazily, so the first one wins): unanchored, the engine
    tried every character of the value, and the Country entry comes last (1M lines: region and
    country 1.1 s -> 0.7 s).
    """
    alternatives = "|".join(re.escape(t) for t in types)
    return rf"^(?:[^,]*,)*?[^:,]*:([^:,]*:)(?:{alternatives})(?:,|$)"


def _first_name(found: Column) -> Column:
    """Decoded name of a :func:`_place_pattern` match (null when nothing matched)."""
    return F.when(found != "", decode(F.substring(found, F.lit(1), F.length(found) - 1)))


def split_places_lines(lines: DataFrame, *, value_col: str = "value") -> DataFrame:
    """``photo_id``, ``entries`` (the still-encoded entries) and ``places_reason`` (null: well formed)
    of places lines: the split and the checks that both the per-photo levels
    (:func:`places_levels`) and the place-name list (:func:`place_entries`) start from, so that
    a job needing both parses the places file once."""
    df = _stages(lines, [("_f", F.split(value_col, "\t", -1)),
                         ("_v", _strip_line_end(F.get(F.col("_f"), 1))), ("_id", _int(F.get(F.col("_f"), 0)))])
    bad_line = (F.size("_f") != 2) | F.col("_id").isNull() | ~F.is_valid_utf8(value_col)
    reason = F.when(bad_line, F.lit("bad_places_line")).when(~F.col("_v").rlike(PLACES_VALUE), F.lit("bad_place_entry"))
    return df.select(F.col("_id").alias("photo_id"), F.col("_v").alias("entries"), reason.alias("places_reason"))


def place_entries(split: DataFrame) -> DataFrame:
    """``name`` (still URL-encoded) and ``type`` of every entry of every well-formed places line.

    The column twin of :func:`pipeline.yfcc.parse_places_line` over all entries, not just the
    first of each level: split on ``,`` then ``:`` and exploded. Names stay encoded so that callers
    can reduce them to distinct values before paying for :func:`decode`. ``split`` comes from
    :func:`split_places_lines`.
    """
    df = split.where(F.col("places_reason").isNull())
    entries = df.select(F.explode(F.split("entries", ",")).alias("_e")).where(F.col("_e") != "")
    parts = F.split("_e", ":", -1)
    return entries.select(F.get(parts, 1).alias("name"), F.get(parts, 2).alias("type"))


def places_levels(split: DataFrame) -> DataFrame:
    """``photo_id``, ``town``, ``region``, ``country`` and ``places_reason`` of split places lines
    (:func:`split_places_lines`).

    Mirrors :func:`pipeline.yfcc.parse_places` + :func:`pipeline.yfcc.place_levels`: entries
    split on ``,`` then ``:``, names decoded, the first Town, region-level and Country entries.
    Regular expressions over the whole value do this without per-entry lambdas.
    """
    value = F.col("entries")
    levels = {"town": ("Town",), "region": yfcc.REGION_PLACE_TYPES, "country": ("Country",)}
    ok = F.col("places_reason").isNull()
    df = _stages(split, [(f"_{k}", F.when(ok, F.regexp_extract(value, _place_pattern(t), 1))) for k, t in levels.items()])
    return df.select("photo_id", *[_first_name(F.col(f"_{k}")).alias(k) for k in levels], "places_reason")


def parse_places_lines(lines: DataFrame, *, value_col: str = "value") -> DataFrame:
    """:func:`places_levels` of raw places lines (for callers that need only the levels)."""
    return places_levels(split_places_lines(lines, value_col=value_col))


def parse_hash_lines(lines: DataFrame, *, value_col: str = "value") -> DataFrame:
    """``photo_id`` and ``photo_hash`` of ``yfcc100m_hash`` lines (malformed lines: null id)."""
    df = _stages(lines, [("_f", F.split(value_col, "\t", -1)), ("_h", _strip_line_end(F.get(F.col("_f"), 1)))])
    ok = (F.size("_f") == 2) & (F.col("_h") != "")
    return df.select(F.when(ok, _int(F.get(F.col("_f"), 0))).alias("photo_id"), F.when(ok, F.col("_h")).alias("photo_hash"))
