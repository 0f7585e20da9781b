"""Build the hashtag vocabulary and the split dataset from the clean table.

    spark-submit jobs/build_vocab.py [vocab.size=100000] [vocab.drop_top=10] \
        [splits.test=500000 splits.val=250000]

Extract: ``outputs.clean`` and ``outputs.place_names`` (jobs/clean_metadata.py). Transform:
:mod:`pipeline.vocab`, :mod:`pipeline.splits`. Load: ``outputs.vocab``, ``outputs.dataset``
(images with 1..15 vocabulary tags and their split), ``outputs.dataset_rejects`` and
``outputs.stats``/build_vocab.json, published together once clean images = dataset + rejected.
"""
from __future__ import annotations

import json
import logging

from omegaconf import DictConfig
from pyspark import StorageLevel
from pyspark.sql import functions as F

from pipeline import io, place_names, splits, vocab
from pipeline.clean import DISTINCT_COLUMNS
from pipeline.config import PipelineError, require_int, run_job, split_size
from pipeline.stage import ConservationCheck, check_conservation, markdown_table, stage, start_spark

log = logging.getLogger("pipeline.build_vocab")

DATASET_COLUMNS = ("photo_id", "photo_hash", "user_nsid", "latitude", "longitude", "tag_ids",
                   "town", "region", "country", "continent", "download_url", "split")


def main(cfg: DictConfig, check: ConservationCheck = check_conservation) -> None:
    drop_top = require_int(cfg, "vocab.drop_top", minimum=0)
    size = require_int(cfg, "vocab.size", minimum=1)
    min_tags = require_int(cfg, "vocab.min_tags", minimum=1)
    max_tags = require_int(cfg, "vocab.max_tags", minimum=min_tags)
    test, val = split_size(cfg.splits.test, "splits.test"), split_size(cfg.splits.val, "splits.val")
    seed = require_int(cfg, "splits.seed")
    spark = start_spark(cfg, "build_vocab", inputs=[cfg.outputs.clean])
    out = cfg.outputs
    inputs = io.require_outputs(spark, out, "clean", "place_names")

    with stage(cfg, "build_vocab") as st, io.staged_outputs(spark) as staged:
        clean = spark.read.parquet(inputs["clean"])
        n_clean = clean.count()  # counted on its own: the check below must not trust the transform
        with st.timed("vocabulary"):
            # The head (drop_top + size rows) is kept: the dropped tags are read again at the end.
            ranked = vocab.rank_tags(vocab.tag_counts(clean), drop_top + size).persist(StorageLevel.MEMORY_AND_DISK)
            voc, dropped = vocab.split_ranked(ranked, drop_top)
            staged.write_parquet(voc, out.vocab, partitions=1, sort_by=["index"])
            voc = staged.read_parquet(out.vocab)
        n_vocab = voc.count()
        if n_vocab == 0:
            raise PipelineError(f"vocab.drop_top={drop_top} drops every tag of {out.clean}: nothing left")
        if n_vocab < size:
            log.warning("only %d tags after dropping the top %d (vocab.size=%d)", n_vocab, drop_top, size)

        with st.timed("filter_and_split"):
            applied = vocab.apply_vocabulary(clean, voc, min_tags, max_tags).persist(StorageLevel.MEMORY_AND_DISK)
            kept = splits.assign_splits(applied.where(F.col("reason").isNull()), test, val, seed)
            # Already hash-partitioned by photo_id (the join): sorted within partitions, no shuffle.
            staged.write_parquet(kept.select(*DATASET_COLUMNS), out.dataset, sort_by=["photo_id"],
                                 distinct_columns=[c for c in DATASET_COLUMNS if c in DISTINCT_COLUMNS])
            rejected = applied.where(F.col("reason").isNotNull()).select(
                "photo_id", "reason", F.size("tag_ids").alias("vocab_tags"))
            staged.write_parquet(rejected, out.dataset_rejects, partitions=1, sort_by=["photo_id"])

        dataset = staged.read_parquet(out.dataset)
        rejects = staged.read_parquet(out.dataset_rejects)
        by_reason = {r["reason"]: r["count"] for r in rejects.groupBy("reason").count().collect()}
        by_split = {r["split"]: r["count"] for r in dataset.groupBy("split").count().collect()}
        stats = vocab.dataset_stats(applied, dataset, n_vocab)
        applied.unpersist()
        names = spark.read.parquet(inputs["place_names"])
        stats.update({f"split/{k}": v for k, v in by_split.items()})
        stats.update({f"rejected/{k}": v for k, v in by_reason.items()})
        stats["place_names"] = names.count()
        stats["place_tags_in_vocab"] = place_names.place_tag_ids(voc, names).count()
        st.metrics_from(stats)
        head = [r.asDict() for r in voc.where(F.col("index") < cfg.vocab.head_rows).orderBy("index").collect()]
        st.artifact_text(markdown_table(head, ["index", "tag", "count"]), "vocab_head.md")
        st.artifact_text(markdown_table([r.asDict() for r in dropped.orderBy("rank").collect()],
                                        ["rank", "tag", "count"]), "dropped_top_tags.md")
        ranked.unpersist()
        st.artifact_json(stats, "stats.json")
        staged.write_texts(out.stats, {"build_vocab.json": json.dumps(stats, indent=2, sort_keys=True)})
        check("build_vocab", n_clean, {"dataset": stats["images"], "rejected": sum(by_reason.values())})
        log.info("vocabulary %d tags; %d images (%s); %.2f tags per image", n_vocab, stats["images"],
                 ", ".join(f"{k} {v}" for k, v in sorted(by_split.items())), stats["tags_per_image"])


if __name__ == "__main__":
    run_job(main)
