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
from common.tracking import producer
from pipeline import images, img2dataset, io, shards
from pipeline.config import PipelineError, require_int, run_job
from pipeline.shard_progress import PROGRESS_DIR
from pipeline.stage import ConservationCheck, check_conservation, stage, start_spark

log = logging.getLogger("pipeline.shard_dataset")
SOURCES = ("mmcommons", "img2dataset")


def image_source(spark, cfg: DictConfig, dataset, s3: images.S3Options = ()):
    """The dataset with ``image_path`` (image tree) or img2dataset locators, and the qualified
    image root (mmcommons). No image bytes: each shard task reads its own rows' images."""
    s = cfg.shard
    if s.image_source == "mmcommons":
        root = io.qualify(spark, str(s.image_root))
        fs, path = images.filesystem(root, s3)
        if fs.get_file_info(path).type != pa.fs.FileType.Directory:
            raise PipelineError(f"setting shard.image_root: {s.image_root} is not a directory")
        return dataset.withColumn("image_path", shards.image_relpath_col()), root
    join = img2dataset.check_join(str(s.img2dataset_join))
    if s.img2dataset_dir is None:
        raise PipelineError("setting shard.img2dataset_dir: required when shard.image_source=img2dataset")
    io.require_input(spark, s.img2dataset_dir, "shard.img2dataset_dir")
    return img2dataset.locate(spark, dataset, str(s.img2dataset_dir), join), None


def check_locality(st, files: list[dict]) -> None:
    """Mean number of img2dataset files a shard task read (each task counts its own): about 1 when
    the download followed jobs/image_urls.py's list, up to every file when it did not."""
    counts = [f["sources"] for f in files if f.get("sources") is not None]
    per_shard = sum(counts) / max(len(counts), 1)
    st.metric("img2dataset_files_per_shard", per_shard)
    if per_shard > 4:
        log.warning("each shard task read %.1f img2dataset files on average: download from jobs/image_urls.py's "
                    "list (same shard.seed and rows_per_file) so that each reads about one", per_shard)


def remove_stale(spark, tmp: str, files: list[dict]) -> int:
    """Delete what is in the unpublished version but not in this run's records (files of an
    earlier run with other settings), and the progress markers; the number deleted."""
    io.remove(spark, f"{tmp}/{PROGRESS_DIR}")
    prefix = f"{tmp.rstrip('/')}/"
    keep = {f["path"] for f in files}
    stale = []
    for uri in io.list_files(spark, tmp, hidden=True):
        rel = uri[len(prefix):] if uri.startswith(prefix) else None
        if rel is None:         # never delete what cannot be placed inside the staging folder
            log.warning("not removing %s: not under %s", uri, prefix)
        elif "/" in rel and rel not in keep:
            stale.append(uri)
    for uri in stale:
        io.remove(spark, uri)
    return len(stale)


def write_small_tables(spark, inputs: dict[str, str], base_uri: str, s3: images.S3Options = ()) -> int:
    """vocab.parquet and place_names.parquet in the contract's exact schemas; returns V."""
    fs, base = images.filesystem(base_uri, s3)
    vocab = spark.read.parquet(inputs["vocab"]).orderBy("index").toArrow()
    vocab = pa.table([vocab[c].cast(VOCAB_SCHEMA.field(c).type) for c in VOCAB_SCHEMA.names], schema=VOCAB_SCHEMA)
    pq.write_table(vocab, f"{base}/vocab.parquet", filesystem=fs)
    names = spark.read.parquet(inputs["place_names"]).orderBy("level", "name").toArrow()
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
    threads = require_int(cfg, "shard.read_threads", minimum=1)
    decoders = 0 if s.decode_threads is None else require_int(cfg, "shard.decode_threads", minimum=1)
    in_flight = require_int(cfg, "shard.images_in_flight", minimum=1)
    seed = require_int(cfg, "shard.seed")
    if s.image_source not in SOURCES:
        raise PipelineError(f"setting shard.image_source={s.image_source!r}: expected one of {SOURCES}")
    if quality > 100:
        raise PipelineError(f"setting shard.jpeg_quality={quality}: expected 1..100")
    spark = start_spark(cfg, "shard_dataset", inputs=[cfg.outputs.dataset])
    if spark.conf.get("spark.speculation", "false").strip().lower() == "true":
        raise PipelineError("setting spark.speculation=true: shard_dataset writes each shard file in place, where a "
                            "speculative copy of a task would write the same file at once; run it with "
                            "--conf spark.speculation=false")
    out = cfg.outputs
    inputs = io.require_outputs(spark, out, "dataset", "vocab", "place_names")

    with stage(cfg, "shard_dataset") as st:
        dataset = spark.read.parquet(inputs["dataset"])
        counts = dataset.groupBy("split").agg(F.count(F.lit(1)).alias("count"),
                                              F.max(F.size("tag_ids")).alias("max_tags")).collect()
        split_rows = {r["split"]: r["count"] for r in counts}
        max_tags = max((int(r["max_tags"]) for r in counts), default=0)   # loaders pad tag lists to it
        n_input = sum(split_rows.values())
        n_files = shards.files_per_split(split_rows, rows_per_file)
        # How pyarrow (here and in the shard tasks) reaches an S3 store: as the job's s3a settings say.
        s3 = images.s3_options(io.hadoop_settings(spark, list(images.S3A_SETTINGS)))
        df, image_root = image_source(spark, cfg, dataset, s3)
        df = shards.assign_shards(df, n_files, seed)

        with io.staged_outputs(spark) as staged:
            # A fixed staging folder: after a kill, the rerun skips the shard files already done.
            tmp = io.qualify(spark, staged.stage(str(s.output), resumable=True))
            records_path = f"{tmp}/records"  # not "_records": Spark skips hidden names
            io.remove(spark, records_path)
            settings = shards.ShardSettings(out_dir=tmp, image_source=str(s.image_source), image_root=image_root,
                                            short_side=size, quality=quality, rows_per_group=rows_per_group,
                                            read_threads=threads, decode_threads=decoders,
                                            images_in_flight=in_flight, s3=s3)
            with st.timed("shard"):
                shards.write_shards(spark, df, n_files, settings).write.parquet(records_path)
            records = spark.read.parquet(records_path)
            files = [r.asDict() for r in records.where(F.col("kind") == "file").collect()]
            resumed = sum(1 for f in files if f["resumed"])
            if s.image_source == "img2dataset":
                check_locality(st, files)
            if resumed:
                log.info("resumed: %d of %d shard files were already complete and verified", resumed, len(files))
            rejects = records.where(F.col("kind") == "reject").select("photo_id", "split", "reason", "path")
            staged.write_parquet(rejects.repartition("photo_id"), out.shard_rejects, sort_by=["photo_id"])
            vocab_size = write_small_tables(spark, inputs, tmp, s3)
            manifest = Manifest(vocab_size=vocab_size, image_size=size, splits=shards.splits_from_records(files),
                                max_tags=max_tags,
                                extra={"image_source": str(s.image_source), "seed": seed,
                                       "rows_per_file": rows_per_file, "rows_per_row_group": rows_per_group,
                                       "jpeg_quality": quality, "mlflow_run": producer()})
            io.remove(spark, records_path)
            n_stale = remove_stale(spark, tmp, files)
            io.write_text_file(spark, f"{tmp}/{MANIFEST_NAME}", manifest.to_json())

            rej = staged.read_parquet(out.shard_rejects)
            by_reason = {r["reason"]: r["count"] for r in rej.groupBy("reason").count().collect()}
            rows = {name: info.rows for name, info in manifest.splits.items()}
            st.metrics_from({"input_rows": n_input, "files": len(files), "files_resumed": resumed,
                             "stale_files_removed": n_stale, "rejected": sum(by_reason.values()),
                             **{f"rows/{k}": v for k, v in rows.items()}})
            st.metrics_from(by_reason, prefix="rejected/")
            st.metric("images_per_second", sum(rows.values()) / max(st.metrics["seconds/shard"], 1e-9))
            st.artifact_text(manifest.to_json(), "manifest.json")
            try:
                check("shard_dataset", n_input, {"sharded": sum(rows.values()), "rejected": sum(by_reason.values())})
            except PipelineError:
                staged.discard(resumable=True)   # wrong counts: nothing of this run is worth resuming
                raise


if __name__ == "__main__":
    run_job(main)
