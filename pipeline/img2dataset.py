"""img2dataset as the image source: the URL list it downloads, and its Parquet output read in place.

`img2dataset <https://github.com/rom1504/img2dataset>`_ fetches the photos' ``download_url``\\ s at
scale. ``jobs/image_urls.py`` writes its input: one Parquet file per shard file of
``shard_dataset`` (same seeded assignment), rows in the shard's order, ``photo_id`` as an
additional column. img2dataset cuts each input file into consecutive ranges, so each of its output
files then holds photos of one shard only.

``shard_dataset`` never moves image bytes through Spark: on the driver, a join on narrow columns
gives every dataset row a locator (the img2dataset file and row index of its image, and the
download status); each shard task then reads its rows' ``jpg`` values straight from those files,
one row group at a time (:func:`pipeline.images.read_img2dataset`, on executors, which do not have
this module's driver-side imports).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.config import PipelineError

#: Values of ``shard.img2dataset_join``: the img2dataset column matched to the dataset's.
JOIN_KEYS: dict[str, str] = {"photo_id": "photo_id", "url": "download_url"}


def url_list(df: DataFrame) -> DataFrame:
    """img2dataset's input columns: ``url`` (url_col) and ``photo_id`` (save_additional_columns)."""
    return df.select(F.col("download_url").alias("url"), "photo_id")


def command(url_list_dir: str, output_dir: str, image_size: int, processes: int = 16, threads: int = 64) -> str:
    """The img2dataset command that turns ``url_list_dir`` into what ``shard_dataset`` reads:
    the short side resized to the shard size without padding (``keep_ratio``, never upscaled),
    Parquet output with ``photo_id`` kept, one output file per input range."""
    return (f"img2dataset --url_list {url_list_dir} --input_format parquet --url_col url "
            f"--save_additional_columns '[\"photo_id\"]' --output_format parquet --output_folder {output_dir} "
            f"--image_size {image_size} --resize_mode keep_ratio --resize_only_if_bigger True "
            f"--encode_format jpg --encode_quality 95 --number_sample_per_shard 10000 "
            f"--processes_count {processes} --thread_count {threads} --enable_wandb False")


def check_join(join: str) -> str:
    if join not in JOIN_KEYS:
        raise PipelineError(f"setting shard.img2dataset_join={join!r}: expected one of {sorted(JOIN_KEYS)} "
                            "(photo_id needs img2dataset's --save_additional_columns '[\"photo_id\"]')")
    return join


def locate(spark: SparkSession, dataset: DataFrame, i2d_dir: str, join: str) -> DataFrame:
    """``dataset`` with ``i2d_file``, ``i2d_row`` and ``i2d_status`` (null where img2dataset has no row
    for the photo): the locators :func:`pipeline.images.read_img2dataset` reads on executors.

    Only narrow columns are read and shuffled: ``jpg`` is pruned from the scan, and a photo with
    several img2dataset rows (downloaded twice) takes its first success, else its first failure.
    """
    img = spark.read.option("pathGlobFilter", "*.parquet").parquet(i2d_dir)   # beside *_stats.json
    if "jpg" not in img.columns:
        raise PipelineError(f"setting shard.img2dataset_dir={i2d_dir}: no jpg column (columns: {sorted(img.columns)}); "
                            "expected img2dataset's output with --output_format parquet --encode_format jpg")
    if join not in img.columns:
        hint = ("run img2dataset with --save_additional_columns '[\"photo_id\"]' (jobs/image_urls.py's list has it), "
                "or set shard.img2dataset_join=url") if join == "photo_id" else "set shard.img2dataset_join=photo_id"
        raise PipelineError(f"setting shard.img2dataset_join={join}: the img2dataset output in {i2d_dir} has no "
                            f"{join} column (columns: {sorted(img.columns)}); {hint}")
    ds_key = JOIN_KEYS[join]
    status = F.col("status") if "status" in img.columns else F.when(F.col("jpg").isNotNull(), F.lit("success"))
    narrow = img.select(F.col(join).cast(dataset.schema[ds_key].dataType).alias("_i2d_key"),
                        F.coalesce(status, F.lit("failed_to_download")).alias("status"),
                        F.col("_metadata.file_path").alias("file"), F.col("_metadata.row_index").alias("row"))
    best = (narrow.where(F.col("_i2d_key").isNotNull())
            .groupBy("_i2d_key")
            .agg(F.min(F.struct((F.col("status") != "success").alias("failed"), "file", "row", "status")).alias("_b")))
    located = dataset.join(best, dataset[ds_key] == best["_i2d_key"], "left")
    return located.select(*dataset.columns, F.col("_b.file").alias("i2d_file"), F.col("_b.row").alias("i2d_row"),
                          F.col("_b.status").alias("i2d_status"))
