"""clean_metadata: from parsed YFCC lines to the kept photos and the rejects (docs/method.md, filters).

Every input line ends in exactly one of two tables: the narrow metadata table of kept photos, or
the rejects table with a reason. The transforms here are pure DataFrame -> DataFrame functions;
``jobs/clean_metadata.py`` reads the files, calls :func:`classify` and writes the two tables.
"""
from __future__ import annotations

from typing import Optional

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipeline import yfcc
from pipeline.parse import PARSE_REASONS

#: Reasons for dropping a parsed line, in the order they are checked (after PARSE_REASONS).
FILTER_REASONS: tuple[str, ...] = (
    "video", "no_geo", "no_tags", "no_usable_tags", "no_places", "bad_places", "no_town",
    "no_photo_hash", "duplicate_photo_id",
)
REJECT_REASONS: tuple[str, ...] = PARSE_REASONS + FILTER_REASONS

#: The narrow metadata table (one row per kept photo), in column order.
CLEAN_COLUMNS: tuple[str, ...] = (
    "photo_id", "photo_hash", "line_number", "user_nsid", "date_taken", "date_uploaded",
    "latitude", "longitude", "accuracy", "download_url", "tags",
    "town", "region", "country", "continent",
)
#: Columns of the clean table whose values are (nearly) all different: written without a dictionary.
DISTINCT_COLUMNS: tuple[str, ...] = ("photo_id", "photo_hash", "line_number", "date_taken", "date_uploaded",
                                     "latitude", "longitude", "download_url")
REJECT_COLUMNS: tuple[str, ...] = ("reason", "file", "photo_id", "line_number", "line")
#: What a line rejected before the joins still carries through them: the rejects table's columns
#: and the duplicate ranking's keys. Its metadata columns are nulled there.
_REJECTED_KEEPS: frozenset[str] = frozenset({"reason", "file_id", "photo_id", "line_number", "line", "line_hash"})


def _or_reason(current: Column, cond: Column, reason: str) -> Column:
    """Keep the first reason a row got; give ``reason`` to rows that had none and match ``cond``."""
    return F.when(current.isNotNull(), current).when(cond, F.lit(reason))


def one_per_photo(df: DataFrame, *value_cols: str) -> DataFrame:
    """One deterministic row per photo_id (the smallest values), however many lines repeat it.

    A window rather than ``min(struct)``: an aggregate over strings cannot use hash aggregation,
    and its sort-based plan sorts every row twice (partial and final) where the window sorts once;
    the result is already sorted by photo_id for the join that follows.
    """
    w = Window.partitionBy("photo_id").orderBy(*[F.col(c).asc_nulls_first() for c in value_cols])
    return (df.where(F.col("photo_id").isNotNull()).withColumn("_first", F.row_number().over(w))
            .where(F.col("_first") == 1).select("photo_id", *value_cols))


def filter_by_dictionary(df: DataFrame, dictionary: DataFrame) -> DataFrame:
    """Keep only tags present in ``dictionary`` (column ``word``), tag order preserved.

    The optional GloVe filter (docs/method.md, tag normalisation). Dictionaries have millions of words, too many for a
    literal, so tags are exploded, joined and regrouped by the per-line ``_row_id``.
    """
    words = dictionary.select(F.col("word").alias("_tag")).distinct()
    exploded = (df.where(F.col("reason").isNull())
                .select("_row_id", F.posexplode("tags").alias("_pos", "_tag"))
                .join(words, "_tag", "left_semi"))
    regrouped = (exploded.groupBy("_row_id")
                 .agg(F.array_sort(F.collect_list(F.struct("_pos", "_tag"))).alias("_kept")))
    kept_tags = F.col("_kept._tag")
    return (df.join(regrouped, "_row_id", "left")
            .withColumn("tags", F.when(F.col("reason").isNull(),
                                       F.coalesce(kept_tags, F.array().cast("array<string>"))))
            .drop("_kept"))


def narrow_rejected(df: DataFrame) -> DataFrame:
    """Rows that already have a reason keep only what the rejects table and the duplicate ranking
    read; their metadata (tags, URL, user, dates, ...) becomes null. Most YFCC lines are rejected
    before the joins, and nulls cost next to nothing in the shuffle, the sorts and the cache that
    every line still goes through (the lines stay, so that rows are conserved and ranked)."""
    rejected = F.col("reason").isNotNull()
    return df.select(*[F.col(c) if c in _REJECTED_KEEPS else F.when(~rejected, F.col(c)).alias(c)
                       for c in df.columns])


def classify(parsed: DataFrame, places: DataFrame, continents: DataFrame, *,
             hashes: Optional[DataFrame] = None, dictionary: Optional[DataFrame] = None) -> DataFrame:
    """All parsed lines with their place fields and ``reason`` (null = kept).

    ``parsed`` comes from :func:`pipeline.parse.parse_lines` (one row per input line),
    ``places`` from :func:`pipeline.parse.parse_places_lines`, ``hashes`` (23-column layout only)
    from :func:`pipeline.parse.parse_hash_lines`. Left joins on de-duplicated right sides keep
    exactly one output row per input line.
    """
    df = parsed
    r = F.col("reason")
    df = df.withColumn("reason", _or_reason(r, F.col("marker") == yfcc.MARKER_VIDEO, "video"))
    df = df.withColumn("reason", _or_reason(r, F.col("latitude").isNull(), "no_geo"))
    df = df.withColumn("reason", _or_reason(r, F.col("n_raw_tags") == 0, "no_tags"))
    if dictionary is not None:
        df = filter_by_dictionary(df, dictionary)
    df = df.withColumn("reason", _or_reason(r, F.size("tags") == 0, "no_usable_tags"))
    df = narrow_rejected(df)

    # Duplicates are ranked before the joins, so that the rows' one shuffle and sort by photo_id
    # also serve both sort-merge joins after (ranking after them sorted every row a second time).
    # The order is the same: the place and hash-table reasons are the same for every line of a
    # photo, so where they apply every line is rejected whatever its rank, and where they do not
    # a line would be kept exactly when it has no reason yet and (25 columns) a photo hash.
    hash_missing = F.col("photo_hash").isNull() | (F.col("photo_hash") == "")
    rejected_so_far = r.isNotNull() if hashes is not None else (r.isNotNull() | hash_missing)
    w = Window.partitionBy("photo_id").orderBy(rejected_so_far, F.col("line_number").asc_nulls_last(), "line_hash")
    df = df.withColumn("_rank", F.when(F.col("photo_id").isNotNull(), F.row_number().over(w)))

    place = one_per_photo(places, "places_reason", "town", "region", "country")
    df = df.join(place.withColumn("_has_places", F.lit(True)), "photo_id", "left")
    df = df.withColumn("reason", _or_reason(r, F.col("_has_places").isNull(), "no_places"))
    df = df.withColumn("reason", _or_reason(r, F.col("places_reason").isNotNull(), "bad_places"))
    df = df.withColumn("reason", _or_reason(r, F.col("town").isNull(), "no_town"))
    if hashes is not None:
        h = one_per_photo(hashes, "photo_hash").withColumnRenamed("photo_hash", "_hash")
        df = (df.join(h, "photo_id", "left")
              .withColumn("photo_hash", F.coalesce("photo_hash", "_hash")).drop("_hash"))
    df = df.withColumn("reason", _or_reason(r, hash_missing, "no_photo_hash"))
    df = df.join(continents, "country", "left")
    # Among lines that would be kept, the first (by line_number, then line content) wins.
    df = df.withColumn("reason", _or_reason(r, F.col("_rank") > 1, "duplicate_photo_id"))
    return df.drop("_has_places", "places_reason", "_rank")


def kept(classified: DataFrame) -> DataFrame:
    """The narrow metadata table: photos that passed every check."""
    return classified.where(F.col("reason").isNull()).select(*CLEAN_COLUMNS)


def file_id(path: Column) -> Column:
    """The 8-byte id a line carries instead of its file's path (~60 bytes through every shuffle)."""
    return F.xxhash64(path)


def file_ids(files: DataFrame) -> DataFrame:
    """``file_id, file`` of the input files (column ``file``, paths as Spark spells them)."""
    return files.select(file_id(F.col("file")).alias("file_id"), "file")


def rejects(classified: DataFrame, files: DataFrame) -> DataFrame:
    """Rejected lines: reason, source file, ids when parsable, and (malformed lines) their start.

    ``classified`` carries ``file_id``; ``files`` (:func:`file_ids`) turns it back into the path,
    a broadcast join against the handful of input files.
    """
    return (classified.where(F.col("reason").isNotNull()).join(F.broadcast(files), "file_id", "left")
            .select("reason", "file", "photo_id", "line_number", "line"))
