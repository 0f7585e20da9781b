"""Frequency baselines (supplement Tables 1-2): rank tags by their training frequency per location.

Global ranks by frequency over all training images; country and town rank by frequency among
the training images of the test image's country / town (town = town, region, country, since town
names repeat). A@k (:func:`common.metrics.accuracy_at_k`'s definition: an image counts when one
of its top k is in its ground truth; images without ground truth are left out) is one SQL
aggregate over the test images, built from Spark's array functions: no Python on the executors,
and one row of counts reaches the driver.
"""
from __future__ import annotations

from typing import Optional, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

LEVELS: tuple[str, ...] = ("global", "country", "town")
VARIANTS: tuple[str, ...] = ("all", "no_places")


def location_key(level: str) -> Column:
    if level == "global":
        return F.lit("")
    if level == "country":
        return F.coalesce(F.col("country"), F.lit(""))
    if level == "town":
        return F.concat_ws("\u0001", F.col("town"), F.coalesce(F.col("region"), F.lit("")),
                           F.coalesce(F.col("country"), F.lit("")))
    raise ValueError(f"unknown baseline level {level!r}; expected one of {LEVELS}")


def top_tags(train: DataFrame, level: str, k: int, excluded: Optional[DataFrame] = None) -> DataFrame:
    """``key``, ``ranked``: each location's ``k`` most frequent training tags (ties: lower index)."""
    tags = train.select(location_key(level).alias("key"), F.explode("tag_ids").alias("tag"))
    if excluded is not None:
        tags = tags.join(F.broadcast(excluded.select(F.col("index").alias("tag"))), "tag", "left_anti")
    counts = tags.groupBy("key", "tag").agg(F.count(F.lit(1)).alias("n"))
    w = Window.partitionBy("key").orderBy(F.col("n").desc(), F.col("tag").asc())
    top = counts.withColumn("r", F.row_number().over(w)).where(F.col("r") <= k)
    return top.groupBy("key").agg(
        F.array_sort(F.collect_list(F.struct("r", "tag"))).getField("tag").alias("ranked"))


def with_predictions(test: DataFrame, train: DataFrame, k: int, place_ids: DataFrame,
                     fallback: bool) -> DataFrame:
    """Test rows with ``pred_<level>_<variant>`` ranked lists and ``fallback_<level>`` flags."""
    df = test
    for variant in VARIANTS:
        excluded = place_ids if variant == "no_places" else None
        for level in LEVELS:
            lists = top_tags(train, level, k, excluded).withColumnRenamed("ranked", f"pred_{level}_{variant}")
            df = df.withColumn("key", location_key(level)).join(
                F.broadcast(lists) if level != "town" else lists, "key", "left").drop("key")
    for level in ("country", "town"):
        df = df.withColumn(f"fallback_{level}", F.col(f"pred_{level}_all").isNull())
    if fallback:
        for variant in VARIANTS:
            g, c, t = (f"pred_{lv}_{variant}" for lv in LEVELS)
            df = df.withColumn(c, F.coalesce(c, g)).withColumn(t, F.coalesce(t, c))
    return df


def unscored_images(test: DataFrame, place_ids: DataFrame) -> dict[str, int]:
    """Per variant, the test images A@k cannot score: no tags (``all``), only place tags (``no_places``).

    Counted by a join of their own, apart from :func:`evaluate`'s per-batch counts, so that the job
    can check every test image was either scored or has no ground truth left to score.
    """
    places = F.broadcast(place_ids.select(F.col("index").alias("tag"), F.lit(True).alias("_place")))
    per_image = (test.select("photo_id", F.explode_outer("tag_ids").alias("tag"))
                 .join(places, "tag", "left").groupBy("photo_id")
                 .agg(F.count("tag").alias("n"), F.count("_place").alias("n_place")))
    row = per_image.agg(F.count_if(F.col("n") == 0).alias("all"),
                        F.count_if(F.col("n") == F.col("n_place")).alias("no_places")).first()
    return {variant: int(row[variant] or 0) for variant in VARIANTS}


def evaluate(predictions: DataFrame, place_ids: Sequence[int], ks: Sequence[int]) -> list[dict]:
    """``level, variant, k, accuracy`` (percent; NaN without any image to score) and ``images``
    (the images scored), over all test images: ``no_places`` scores against the ground truth
    without ``place_ids``."""
    ids = T.ArrayType(T.LongType())
    empty = F.array().cast(ids)
    places = F.array(*[F.lit(int(i)) for i in sorted(set(place_ids))]).cast(ids) if len(place_ids) else empty
    truth_all = F.coalesce(F.col("tag_ids").cast(ids), empty)
    truths = {"all": truth_all, "no_places": F.array_except(truth_all, places)}
    counts = []
    for variant, truth in truths.items():
        scored = F.size(truth) > 0
        counts.append(F.count_if(scored).alias(f"images/{variant}"))
        for level in LEVELS:
            ranked = F.coalesce(F.col(f"pred_{level}_{variant}").cast(ids), empty)
            counts += [F.count_if(scored & (F.size(F.array_intersect(F.slice(ranked, 1, k), truth)) > 0))
                       .alias(f"hits/{level}/{variant}/{k}") for k in ks]
    row = predictions.agg(*counts).first().asDict()
    out = []
    for variant in VARIANTS:
        n = int(row[f"images/{variant}"])
        for level in LEVELS:
            out += [{"level": level, "variant": variant, "k": int(k), "images": n,
                     "accuracy": 100.0 * row[f"hits/{level}/{variant}/{k}"] / n if n else float("nan")} for k in ks]
    return out
