"""build_vocab transforms: tag frequencies, the vocabulary, and images kept by it (docs/method.md, vocabulary).

All DataFrame -> DataFrame. Ranking uses ``orderBy(...).limit(n)``, which Spark runs as a
per-partition top-n and a merge, so only ``drop_top + size`` rows ever meet in one partition.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

#: Why an image of the clean table is not in the vocabulary-filtered dataset.
VOCAB_REASONS: tuple[str, ...] = ("too_few_vocab_tags", "too_many_vocab_tags")


def tag_counts(clean: DataFrame) -> DataFrame:
    """``tag``, ``count``: images carrying each tag (tags are distinct per image)."""
    return clean.select(F.explode("tags").alias("tag")).groupBy("tag").agg(F.count(F.lit(1)).alias("count"))


def rank_tags(counts: DataFrame, top: int) -> DataFrame:
    """The ``top`` most frequent tags with ``rank`` 0.., ties broken by the tag string."""
    order = [F.col("count").desc(), F.col("tag").asc()]
    head = counts.orderBy(*order).limit(top)
    return head.withColumn("rank", F.row_number().over(Window.orderBy(*order)) - 1)


def select_vocabulary(counts: DataFrame, drop_top: int, size: int) -> tuple[DataFrame, DataFrame]:
    """(vocabulary ``index, tag, count``, the ``drop_top`` dropped head ``rank, tag, count``)."""
    return split_ranked(rank_tags(counts, drop_top + size), drop_top)


def split_ranked(ranked: DataFrame, drop_top: int) -> tuple[DataFrame, DataFrame]:
    """:func:`select_vocabulary` from :func:`rank_tags`' output, which a job can persist: both
    results read it, and without it each would count every tag occurrence again."""
    vocab = ranked.where(F.col("rank") >= drop_top).select(
        (F.col("rank") - drop_top).cast("int").alias("index"), "tag", F.col("count").cast("long"))
    dropped = ranked.where(F.col("rank") < drop_top).select("rank", "tag", "count")
    return vocab, dropped


def apply_vocabulary(clean: DataFrame, vocab: DataFrame, min_tags: int, max_tags: int) -> DataFrame:
    """Clean rows with ``tag_ids`` (vocabulary indices of their tags, file order kept), ``n_tags``
    (tags before the vocabulary) and ``reason`` (null = kept; images need ``min_tags``..``max_tags``
    vocabulary tags). Only (photo_id, position, index) triples are shuffled."""
    v = F.broadcast(vocab.select("tag", "index"))
    exploded = clean.select("photo_id", F.posexplode("tags").alias("_pos", "tag")).join(v, "tag")
    grouped = exploded.groupBy("photo_id").agg(F.array_sort(F.collect_list(F.struct("_pos", "index"))).alias("_v"))
    df = clean.withColumn("n_tags", F.size("tags")).drop("tags").join(grouped, "photo_id", "left")
    df = df.select(
        # ``_v.index`` pulls the field out of every struct (codegen'd, unlike a transform lambda).
        "*", F.coalesce(F.col("_v.index"), F.array().cast("array<int>")).alias("tag_ids"),
    ).drop("_v")
    n = F.size("tag_ids")
    return df.withColumn("reason", F.when(n < min_tags, F.lit("too_few_vocab_tags"))
                         .when(n > max_tags, F.lit("too_many_vocab_tags")))


def dataset_stats(applied: DataFrame, dataset: DataFrame, n_vocab: int) -> dict[str, float]:
    """Images, tags per image and vocabulary coverage, from one aggregate per table (no row collect).

    ``applied`` is :func:`apply_vocabulary`'s output (every clean image, its vocabulary tags and
    its original tag count), ``dataset`` the images kept.
    """
    a = applied.agg(F.count(F.lit(1)).alias("images"), F.sum("n_tags").alias("tags"),
                    F.sum(F.size("tag_ids")).alias("covered")).first()
    d = dataset.agg(F.count(F.lit(1)).alias("images"), F.avg(F.size("tag_ids")).alias("tags_per_image"),
                    F.sum(F.size("tag_ids")).alias("tag_occurrences")).first()
    used = dataset.select(F.explode("tag_ids")).distinct().count()
    return {
        "clean_images": a["images"], "clean_tag_occurrences": a["tags"] or 0,
        "images": d["images"], "tags_per_image": d["tags_per_image"] or 0.0,
        "tag_occurrences": d["tag_occurrences"] or 0, "vocab_size": n_vocab,
        "vocab_coverage_of_tag_occurrences": (a["covered"] or 0) / max(a["tags"] or 0, 1),
        "vocab_tags_used": used,
    }
