"""Frequency baselines (supplement Tables 1-2): rank tags by their training frequency per location.

Global ranks by frequency over all training images; country and town rank by frequency among
the training images of the test image's country / town (town = town, region, country, since town
names repeat). Evaluation uses :func:`common.metrics.accuracy_at_k`, the same code training
uses, applied per Arrow batch on the executors; only per-batch hit counts reach the driver.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from common import metrics

LEVELS: tuple[str, ...] = ("global", "country", "town")
VARIANTS: tuple[str, ...] = ("all", "no_places")
RESULT_SCHEMA = "level string, variant string, k int, hits long, images long"


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


def dense_ranked(lists: pa.Array, width: int, pad: int) -> np.ndarray:
    """A ragged ``list<int>`` Arrow array as an (n, width) int64 matrix, short rows padded."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    n = len(lists)
    out = np.full((n, width), pad, dtype=np.int64)
    filled = lists.fill_null(pa.scalar([], type=lists.type)) if lists.null_count else lists
    offsets = np.asarray(filled.offsets, dtype=np.int64)
    values = np.asarray(filled.values, dtype=np.int64)[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    lengths = np.minimum(np.diff(offsets), width)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = values[np.repeat(offsets[:-1], lengths) + cols]
    return out


def evaluate_batches(vocab_size: int, place_mask: np.ndarray, ks: Sequence[int]):
    """The ``mapInArrow`` function: per batch, A@k hit counts of every level and variant."""
    width = max(ks)
    pad = vocab_size  # an index no image carries; metrics run over vocab_size + 1 "tags"
    mask = np.zeros(vocab_size + 1, dtype=bool)
    mask[:vocab_size] = place_mask

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            truth_all = metrics.TagSets.from_arrow(batch.column("tag_ids"))
            truths = {"all": truth_all, "no_places": truth_all.without(mask)}
            rows = []
            for variant, truth in truths.items():
                n = int((truth.counts > 0).sum())
                for level in LEVELS:
                    ranked = dense_ranked(batch.column(f"pred_{level}_{variant}"), width, pad)
                    acc = metrics.accuracy_at_k(ranked, truth, vocab_size + 1, ks) if n else {k: 0.0 for k in ks}
                    rows += [{"level": level, "variant": variant, "k": k, "hits": round(acc[k] * n / 100.0),
                              "images": n} for k in ks]
            yield pa.RecordBatch.from_pylist(rows, schema=pa.schema([
                ("level", pa.string()), ("variant", pa.string()), ("k", pa.int32()),
                ("hits", pa.int64()), ("images", pa.int64())]))

    return run


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


def evaluate(predictions: DataFrame, vocab_size: int, place_mask: np.ndarray, ks: Sequence[int]) -> DataFrame:
    """``level, variant, k, accuracy`` (percent), summed over all test images."""
    cols = ["tag_ids"] + [f"pred_{lv}_{v}" for v in VARIANTS for lv in LEVELS]
    counts = predictions.select(*cols).mapInArrow(evaluate_batches(vocab_size, place_mask, ks), RESULT_SCHEMA)
    return (counts.groupBy("level", "variant", "k")
            .agg((100.0 * F.sum("hits") / F.sum("images")).alias("accuracy"), F.sum("images").alias("images")))
