"""Deterministic train / val / test splits from a hash of photo_id (docs/method.md, splits).

The authors shuffled without a seed; here a photo's split depends only on its id and the seed,
so it is the same on every rerun and every cluster size. Sizes are counts (500k / 250k at full
scale: the photos with the smallest hashes) or fractions (hash below a threshold).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipeline.config import PipelineError

_FRACTION_BITS = 53


def split_key(seed: int) -> Column:
    """A 64-bit hash of (seed, photo_id): the order in which photos are drawn for test, then val."""
    return F.xxhash64(F.lit(seed).cast("long"), F.col("photo_id"))


def assign_splits(df: DataFrame, test: int | float, val: int | float, seed: int) -> DataFrame:
    """``df`` with a ``split`` column: test, val or train."""
    key = split_key(seed)
    if isinstance(test, float) or isinstance(val, float):
        if not (isinstance(test, float) and isinstance(val, float)):
            raise PipelineError(f"splits.test={test!r}, splits.val={val!r}: give both as counts or both as fractions")
        if test + val >= 1.0:
            raise PipelineError(f"splits.test + splits.val = {test + val}: must be below 1")
        u = F.shiftright(key, 64 - _FRACTION_BITS).bitwiseAND((1 << _FRACTION_BITS) - 1) / float(1 << _FRACTION_BITS)
        split = F.when(u < test, "test").when(u < test + val, "val").otherwise("train")
        return df.withColumn("split", split)
    n = df.count()
    if test + val >= n:
        raise PipelineError(f"splits.test + splits.val = {test + val:,} leaves no training images "
                            f"out of {n:,}; use fractions (e.g. splits.test=0.1 splits.val=0.05)")
    order = [F.col("_k"), F.col("photo_id")]
    head = (df.select(key.alias("_k"), "photo_id").orderBy(*order).limit(test + val)
            .withColumn("_r", F.row_number().over(Window.orderBy(*order))))
    bounds = {r["_r"]: (r["_k"], r["photo_id"]) for r in head.where(F.col("_r").isin(test, test + val)).collect()}
    pos = F.struct(key, F.col("photo_id"))

    def at_or_below(rank: int) -> Column:
        if rank == 0:
            return F.lit(False)
        k, pid = bounds[rank]
        return pos <= F.struct(F.lit(k).cast("long"), F.lit(pid).cast("long"))

    split = F.when(at_or_below(test), "test").when(at_or_below(test + val), "val").otherwise("train")
    return df.withColumn("split", split)
