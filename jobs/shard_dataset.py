"""Write train/val/test Parquet shards with resized images, and the manifest training reads.

    spark-submit jobs/shard_dataset.py [shard.image_size=300] [shard.image_root=/data/images]
    spark-submit jobs/shard_dataset.py shard.image_source=img2dataset shard.img2dataset_dir=/data/i2d

Extract: ``outputs.dataset``, ``outputs.vocab`` (jobs/build_vocab.py), ``outputs.place_names``
(jobs/clean_metadata.py) and the images (multimedia-commons tree or img2dataset Parquet).
Transform: :mod:`pipeline.shards`. Load: ``shard.output`` (shards, vocab.parquet,
place_names.parquet, manifest.json) and ``outputs.shard_rejects`` (missing or undecodable
images), published together once dataset rows = sharded + rejected.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig
from pyspark.sql import functions as F

from common.contract import MANIFEST_NAME, PLACE_NAMES_SCHEMA, VOCAB_SCHEMA, Manifest
from pipeline import images, io, shards
from pipeline.config import PipelineError, require_int, run_job
from pipeline.stage import ConservationCheck, check_conservation, stage, start_spark

log = logging.getLogger("pipeline.shard_dataset")
SOURCES = ("mmcommons", "img2dataset")


def image_source(spark, cfg: DictConfig, dataset):
    """The dataset with ``image_path`` (image tree) or ``image_src`` bytes (img2dataset)."""
    s = cfg.shard
    if s.image_source == "mmcommons":
        fs, root = images.filesystem(str(s.image_root))
        if fs.get_file_info(root).type != pa.fs.FileType.Directory:
            raise PipelineError(f"setting shard.image_root: {s.image_root} is not a directory")
        return dataset.withColumn("image_path", shards.image_relpath_col()), io.qualify(spark, str(s.image_root))
    if s.img2dataset_dir is None:
        raise PipelineError("setting shard.img2dataset_dir: required when shard.image_source=img2dataset")
    io.require_input(spark, s.img2dataset_dir, "shard.img2dataset_dir")
    img = spark.read.parquet(s.img2dataset_dir)
    key = str(s.img2dataset_join)
    missing = {key, "jpg"} - set(img.columns)
    if missing:
        raise PipelineError(f"shard.img2dataset_dir {s.img2dataset_dir}: no column(s) {sorted(missing)} "
                            "(expected img2dataset's Parquet output with output_format=parquet)")
    if "status" in img.columns:
        img = img.where(F.col("status") == "success")
    img = img.where(F.col("jpg").isNotNull()).groupBy(key).agg(F.min("jpg").alias("image_src"))
    ds_key = "download_url" if key == "url" else key
    joined = dataset.join(img.withColumnRenamed(key, ds_key), ds_key, "left")
    return joined.withColumn("image_path", F.lit(None).cast("string")), None


def write_small_tables(spark, cfg: DictConfig, base_uri: str) -> int:
    """vocab.parquet and place_names.parquet in the contract's exact schemas; returns V."""
    fs, base = images.filesystem(base_uri)
    vocab = spark.read.parquet(cfg.outputs.vocab).orderBy("index").toArrow()
    vocab = pa.table([vocab[c].cast(VOCAB_SCHEMA.field(c).type) for c in VOCAB_SCHEMA.names], schema=VOCAB_SCHEMA)
    pq.write_table(vocab, f"{base}/vocab.parquet", filesystem=fs)
    names = spark.read.parquet(cfg.outputs.place_names).orderBy("level", "name").toArrow()
    names = pa.table([names[c].cast(PLACE_NAMES_SCHEMA.field(c).type) for c in PLACE_NAMES_SCHEMA.names],
                     schema=PLACE_NAMES_SCHEMA)
    pq.write_table(names, f"{base}/place_names.parquet", filesystem=fs)
    return vocab.num_rows


def main(cfg: DictConfig, check: ConservationCheck = check_conservation) -> None:
    s = cfg.shard
    size = require_int(cfg, "shard.image_size", minimum=8)
    quality = require_int(cfg, "shard.jpeg_quality", minimum=1)
    rows_per_file = require_int(cfg, "shard.rows_per_file", minimum=1)
    rows_per_group = require_int(cfg, "shard.rows_per_row_group", minimum=1)
    seed = require_int(cfg, "shard.seed")
    if s.image_source not in SOURCES:
        raise PipelineError(f"setting shard.image_source={s.image_source!r}: expected one of {SOURCES}")
    if quality > 100:
        raise PipelineError(f"setting shard.jpeg_quality={quality}: expected 1..100")
    spark = start_spark(cfg, "shard_dataset")
    out = cfg.outputs
    io.require_build_vocab_outputs(spark, out)

    with stage(cfg, "shard_dataset") as st:
        dataset = spark.read.parquet(out.dataset)
        split_rows = {r["split"]: r["count"] for r in dataset.groupBy("split").count().collect()}
        n_input = sum(split_rows.values())
        n_files = shards.files_per_split(split_rows, rows_per_file)
        df, image_root = image_source(spark, cfg, dataset)
        df = shards.assign_shards(df, n_files, seed)

        with io.staged_outputs(spark) as staged:
            tmp = io.qualify(spark, staged.stage(str(s.output)))   # executors write there, whatever their cwd
            records_path = f"{tmp}/records"  # not "_records": Spark skips hidden names
            with st.timed("shard"):
                shards.write_shards(df, n_files, tmp, image_root, short_side=size, quality=quality,
                                    rows_per_group=rows_per_group).write.parquet(records_path)
            records = spark.read.parquet(records_path)
            files = [r.asDict() for r in records.where(F.col("kind") == "file").collect()]
            staged.write_parquet(records.where(F.col("kind") == "reject").select("photo_id", "split", "reason", "path"),
                                 out.shard_rejects, partitions=1, sort_by=["photo_id"])
            vocab_size = write_small_tables(spark, cfg, tmp)
            manifest = Manifest(vocab_size=vocab_size, image_size=size, splits=shards.splits_from_records(files),
                                extra={"image_source": str(s.image_source), "seed": seed,
                                       "rows_per_file": rows_per_file, "rows_per_row_group": rows_per_group,
                                       "jpeg_quality": quality})
            io.remove(spark, records_path)
            io.write_text(spark, f"{tmp}/{MANIFEST_NAME}", manifest.to_json())

            rej = staged.read_parquet(out.shard_rejects)
            by_reason = {r["reason"]: r["count"] for r in rej.groupBy("reason").count().collect()}
            rows = {name: info.rows for name, info in manifest.splits.items()}
            st.metrics_from({"input_rows": n_input, "files": len(files), "rejected": sum(by_reason.values()),
                             **{f"rows/{k}": v for k, v in rows.items()}})
            st.metrics_from(by_reason, prefix="rejected/")
            st.metric("images_per_second", sum(rows.values()) / max(st.metrics["seconds/shard"], 1e-9))
            st.artifact_text(manifest.to_json(), "manifest.json")
            check("shard_dataset", n_input, {"sharded": sum(rows.values()), "rejected": sum(by_reason.values())})


if __name__ == "__main__":
    run_job(main)
