"""Write the URL list img2dataset downloads: the dataset's photos, one Parquet file per shard file.

    spark-submit jobs/image_urls.py [shard.rows_per_file=20000] [shard.seed=...]
    img2dataset --url_list data/work/image_urls --input_format parquet ...   (the command it logs)
    spark-submit jobs/shard_dataset.py shard.image_source=img2dataset shard.img2dataset_dir=...

Extract: ``outputs.dataset`` (jobs/build_vocab.py). Transform: the shard assignment of
:mod:`pipeline.shards` (same ``shard.seed`` and ``shard.rows_per_file`` as shard_dataset), columns
of :func:`pipeline.img2dataset.url_list`. Load: ``outputs.image_urls``, each file the rows of one
shard in the shard's order, so each img2dataset output file serves one shard task; published once
its rows = the dataset's rows. The img2dataset command to run next is logged and kept in MLflow.
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from pipeline import img2dataset, io, shards
from pipeline.config import require_int, run_job
from pipeline.stage import ConservationCheck, check_conservation, stage, start_spark

log = logging.getLogger("pipeline.image_urls")


def main(cfg: DictConfig, check: ConservationCheck = check_conservation) -> None:
    rows_per_file = require_int(cfg, "shard.rows_per_file", minimum=1)
    seed = require_int(cfg, "shard.seed")
    size = require_int(cfg, "shard.image_size", minimum=8)
    spark = start_spark(cfg, "image_urls", inputs=[cfg.outputs.dataset])
    out = cfg.outputs
    inputs = io.require_outputs(spark, out, "dataset")

    with stage(cfg, "image_urls") as st:
        dataset = spark.read.parquet(inputs["dataset"])
        split_rows = {r["split"]: r["count"] for r in dataset.groupBy("split").count().collect()}
        n_input = sum(split_rows.values())
        n_files = shards.files_per_split(split_rows, rows_per_file)
        ordered = shards.spread(spark, shards.assign_shards(dataset, n_files, seed), n_files)
        with io.staged_outputs(spark) as staged:
            with st.timed("write"):
                tmp = staged.stage(str(out.image_urls))
                img2dataset.url_list(ordered).write.parquet(tmp)
            n_written = staged.read_parquet(out.image_urls).count()
            cmd = img2dataset.command(tmp, "<img2dataset_dir>", size)
            st.metrics_from({"input_rows": n_input, "urls": n_written, "files": sum(n_files.values())})
            st.artifact_text(cmd + "\n", "img2dataset_command.txt")
            check("image_urls", n_input, {"urls": n_written})
        log.info("next, download the images, then shard them:\n  %s\n  spark-submit jobs/shard_dataset.py "
                 "shard.image_source=img2dataset shard.img2dataset_dir=<img2dataset_dir>", cmd)


if __name__ == "__main__":
    run_job(main)
