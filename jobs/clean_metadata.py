"""Clean YFCC100M metadata: keep geotagged photos with a town and tags; reject the rest, with reasons.

    spark-submit jobs/clean_metadata.py [paths.raw_dir=...] [clean.layout=23] [clean.dictionary=...]

Extract: ``yfcc100m_dataset`` (25 or 23 columns, plain, .bz2 or a folder of parts),
``yfcc100m_places`` and, for 23 columns, ``yfcc100m_hash``. Transform: :mod:`pipeline.parse`,
:mod:`pipeline.clean` and :mod:`pipeline.place_names` (from every places record, so here, where
the places file is read). Load: ``outputs.clean``, ``outputs.clean_rejects`` and
``outputs.place_names`` (Parquet), published together once input lines = kept + rejected.
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig
from pyspark import StorageLevel
from pyspark.sql import Observation
from pyspark.sql import functions as F

from pipeline import clean, io, parse, place_names
from pipeline.config import PipelineError, candidates, run_job
from pipeline.geography import continent_table
from pipeline.stage import ConservationCheck, check_conservation, markdown_table, stage, start_spark

log = logging.getLogger("pipeline.clean_metadata")


def resolve_layout(spark, path: str, setting: str, sample_lines: int) -> int:
    """The column layout of the dataset, from the first lines of every file (a folder of parts):
    before the full parse, a file that has no layout, a folder mixing layouts, or a file that does
    not match an explicit ``clean.layout`` stops the job naming the file."""
    if setting != "auto" and setting not in ("23", "25"):
        raise PipelineError(f"setting clean.layout={setting!r}: expected auto, 25 or 23")
    found: dict[int, str] = {}
    for file in io.list_files(spark, path):
        head = io.head_lines(spark, file, sample_lines)
        layout = parse.detect_layout(head)
        if layout is None and head and setting == "auto":
            raise PipelineError(f"{file}: none of the first {len(head)} lines has 25 or 23 TAB-separated "
                                "fields; is this a yfcc100m_dataset file?")
        if layout is not None and setting != "auto" and layout != int(setting):
            raise PipelineError(f"{file}: its lines have {layout} TAB-separated fields, but clean.layout={setting}")
        if layout is not None:
            found.setdefault(layout, file)
    if len(found) > 1:
        raise PipelineError(f"{path} mixes layouts: {found[25]} has 25 fields, {found[23]} has 23 "
                            "(one release per run)")
    if not found:
        raise PipelineError(f"{path}: no lines to read (an empty dataset)")
    return int(setting) if setting != "auto" else next(iter(found))


def nothing_kept(dataset_path: str, n_input: int, by_reason: dict[str, int]) -> str:
    """The message for an input that keeps no row: stopping here names the likely cause, where
    build_vocab would only find an empty table."""
    top = ", ".join(f"{k} {v:,}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])[:3])
    return (f"{dataset_path}: none of its {n_input:,} lines was kept (commonest reasons: {top or 'none'}); "
            "nothing was published. Check clean.layout, the places file (clean.places) and clean.dictionary")


def main(cfg: DictConfig, check: ConservationCheck = check_conservation) -> None:
    # clean.one_per_photo keeps the first places (and hash) row of each photo, whose ids almost
    # never repeat: Spark's partial group limit would sort every row before the shuffle to drop
    # duplicates that are not there (7 of the places stage's 28 executor seconds at 5M lines).
    spark = start_spark(cfg, "clean_metadata", inputs=[*candidates(cfg.clean.dataset), *candidates(cfg.clean.places)],
                        settings={"spark.sql.optimizer.windowGroupLimitThreshold": -1})
    c = cfg.clean
    dataset_path = io.single_existing(spark, c.dataset, "clean.dataset")
    places_path = io.single_existing(spark, c.places, "clean.places")
    layout = resolve_layout(spark, dataset_path, str(c.layout), c.layout_sample_lines)
    hash_path = io.single_existing(spark, c.hash, "clean.hash") if layout == 23 else None
    if c.dictionary is not None:
        io.require_input(spark, c.dictionary, "clean.dictionary")

    with stage(cfg, "clean_metadata") as st:
        log.info("reading %s (%d columns), %s%s", dataset_path, layout, places_path,
                 f", {hash_path}" if hash_path else "")
        # Lines are counted as they are read, in the same pass as the parse (an Observation on the
        # raw lines, before any transform): the check below must not trust the transform, and a
        # separate count would decompress the whole input twice.
        # The same Observation gathers the input's file paths: lines carry an 8-byte id of their
        # file instead of its path, and only the rejects turn it back into the path.
        read = Observation("input")
        path = F.col("_metadata.file_path")
        raw = io.read_text_lines(spark, dataset_path).observe(
            read, F.count(F.lit(1)).alias("lines"), F.collect_set(path).alias("files"))
        lines = raw.select("value", clean.file_id(path).alias("file_id"))
        if c.dictionary is not None:
            lines = lines.withColumn("_row_id", F.monotonically_increasing_id())
        parsed = parse.parse_lines(lines, layout, line_chars=c.reject_line_chars)
        # Split and checked once, for the per-photo levels and for the place-name list.
        places_split = parse.split_places_lines(io.read_text_lines(spark, places_path))
        places_split = places_split.persist(StorageLevel.MEMORY_AND_DISK)
        places = parse.places_levels(places_split)
        hashes = parse.parse_hash_lines(io.read_text_lines(spark, hash_path)) if hash_path else None
        dictionary = None
        if c.dictionary is not None:
            words = io.read_text_lines(spark, c.dictionary).select(
                parse.normalize_tag(F.split("value", " ")[0], encoded=False).alias("word"))
            dictionary = words.where(F.col("word").isNotNull())
        continents = continent_table(spark, c.get("country_aliases"))

        classified = clean.classify(parsed, places, continents, hashes=hashes, dictionary=dictionary)
        with io.staged_outputs(spark) as staged:
            # Computed once (while the kept table is written) and read again for the rejects.
            classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
            with st.timed("classify_and_write"):
                # Rows are already hash-partitioned by photo_id (duplicate check): sorting within
                # partitions makes reruns write the same files without another shuffle.
                staged.write_parquet(clean.kept(classified), cfg.outputs.clean, sort_by=["photo_id"],
                                     distinct_columns=clean.DISTINCT_COLUMNS)
                observed = read.get          # complete once the kept table's write has read every line
                files = clean.file_ids(spark.createDataFrame([(f,) for f in observed["files"]], "file string"))
                if files.select("file_id").distinct().count() != len(observed["files"]):
                    raise PipelineError(f"{dataset_path}: two of its files have the same 64-bit path hash; "
                                        "rename one (rejects could not name their file)")
                staged.write_parquet(clean.rejects(classified, files), cfg.outputs.clean_rejects,
                                     sort_by=["photo_id", "reason", "file", "line"])
            classified.unpersist()
            n_input = int(observed["lines"])
            with st.timed("place_names"):
                staged.write_parquet(place_names.place_names(places_split, continents), cfg.outputs.place_names,
                                     partitions=1, sort_by=["level", "name"])
            places_split.unpersist()

            # Counted from what was written: the conservation check below trusts no intermediate.
            counts = staged.read_parquet(cfg.outputs.clean).agg(
                F.count(F.lit(1)).alias("kept"), F.count_if(F.col("continent").isNull()).alias("no_continent")).first()
            n_kept, no_continent = counts["kept"], counts["no_continent"]
            rej = staged.read_parquet(cfg.outputs.clean_rejects)
            by_reason = {r["reason"]: r["count"] for r in rej.groupBy("reason").count().collect()}
            n_rejected = sum(by_reason.values())
            n_names = staged.read_parquet(cfg.outputs.place_names).count()

            st.metrics_from({"input_lines": n_input, "kept": n_kept, "rejected": n_rejected,
                             "layout": layout, "kept_without_continent": no_continent, "place_names": n_names})
            st.metrics_from(by_reason, prefix="rejected/")
            summary = [{"reason": k, "lines": v, "share": 100.0 * v / max(n_input, 1)}
                       for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])]
            st.artifact_json({"input_lines": n_input, "kept": n_kept, "rejected": by_reason,
                              "dataset": dataset_path, "layout": layout}, "reject_summary.json")
            st.artifact_text(markdown_table(summary, ["reason", "lines", "share"]), "reject_summary.md")
            check("clean_metadata", n_input, {"kept": n_kept, "rejected": n_rejected})
            if n_kept == 0:
                raise PipelineError(nothing_kept(dataset_path, n_input, by_reason))
        if no_continent:
            log.warning("%d kept photos have a country with no continent (add clean.country_aliases)",
                        no_continent)


if __name__ == "__main__":
    run_job(main)
