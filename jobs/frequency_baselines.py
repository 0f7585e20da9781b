"""Frequency baselines on the test split: global, country and town (supplement Tables 1 and 2).

    spark-submit jobs/frequency_baselines.py [baselines.k=[1,10,50]] [baselines.fallback=false]

Extract: ``outputs.dataset``, ``outputs.vocab`` (jobs/build_vocab.py), ``outputs.place_names``
(jobs/clean_metadata.py). Transform: :mod:`pipeline.baselines` (A@k from :mod:`common.metrics`).
Load: the table under ``outputs.baselines`` (JSON, Markdown), published together once every test
image is scored or has no tag left to score, and the MLflow run's metrics and artifacts.
"""
from __future__ import annotations

import json
import logging

import mlflow
from omegaconf import DictConfig
from pyspark import StorageLevel
from pyspark.sql import functions as F

from common.metrics import NOPLACES, accuracy_metric_name, mlflow_metrics
from common.tracking import EVALUATE, stage_run
from pipeline import baselines, io, place_names
from pipeline.config import PipelineError, run_job
from pipeline.stage import ConservationCheck, check_conservation, markdown_table, stage, start_spark

log = logging.getLogger("pipeline.frequency_baselines")


def table_rows(result: list[dict], ks: list[int]) -> list[dict]:
    """One row per (level, variant) with A@k columns, in the paper's order."""
    acc = {(r["level"], r["variant"], r["k"]): r["accuracy"] for r in result}
    return [{"baseline": f"{level} frequency", "place names": "kept" if variant == "all" else "removed",
             **{f"A@{k}": acc.get((level, variant, k), float("nan")) for k in ks}}
            for variant in baselines.VARIANTS for level in baselines.LEVELS]


def main(cfg: DictConfig, check: ConservationCheck = check_conservation) -> None:
    ks = list(cfg.baselines.k)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise PipelineError(f"setting baselines.k={ks!r}: expected a list of positive integers")
    spark = start_spark(cfg, "frequency_baselines", inputs=[cfg.outputs.dataset])
    out = cfg.outputs
    inputs = io.require_outputs(spark, out, "dataset", "vocab", "place_names")

    with stage(cfg, "frequency_baselines") as st, io.staged_outputs(spark) as staged:
        dataset = spark.read.parquet(inputs["dataset"])
        vocab = spark.read.parquet(inputs["vocab"])
        place_ids = place_names.place_tag_ids(vocab, spark.read.parquet(inputs["place_names"]))
        place_list = sorted(r["index"] for r in place_ids.collect())   # at most the vocabulary's size
        train = dataset.where(F.col("split") == "train")
        test = dataset.where(F.col("split") == "test").select("photo_id", "tag_ids", "town", "region", "country")
        if test.isEmpty():
            raise PipelineError(f"{out.dataset}: the test split is empty (check splits.test)")
        with st.timed("baselines"):
            # Built once: scored here and measured for fallbacks below.
            preds = baselines.with_predictions(test, train, max(ks), place_ids, bool(cfg.baselines.fallback))
            preds = preds.persist(StorageLevel.MEMORY_AND_DISK)
            result = baselines.evaluate(preds, place_list, ks)
            fb = preds.agg(*[F.avg(F.col(f"fallback_{lv}").cast("double")).alias(lv) for lv in ("country", "town")]).first()
            preds.unpersist()
            unscored = baselines.unscored_images(test, place_ids)
        n_test = test.count()
        rows = table_rows(result, ks)
        for r in result:
            st.metric(accuracy_metric_name(r["k"], _suffix(r), prefix=f"baselines/{r['level']}/"), r["accuracy"])
        st.metrics_from({"test_images": n_test, "place_tags": len(place_list),
                         "fallback_share/country": fb["country"], "fallback_share/town": fb["town"]})
        table = markdown_table(rows, ["baseline", "place names", *[f"A@{k}" for k in ks]])
        st.artifact_text(table, "baselines.md")
        st.artifact_json(rows, "baselines.json")
        staged.write_texts(out.baselines, {"baselines.md": table + "\n", "baselines.json": json.dumps(rows, indent=2)})
        for r in sorted(result, key=lambda r: (r["variant"], r["level"], r["k"])):
            check(f"frequency_baselines {r['level']}/{r['variant']}/A@{r['k']}", n_test,
                  {"scored": r["images"], "without tags to score": unscored[r["variant"]]})
        log.info("frequency baselines on %d test images:\n%s", n_test, table)
    log_comparable_runs(cfg, result, ks)


def _suffix(result_row: dict) -> str:
    """The metric-name suffix of a result row's variant (all tags, or place names removed)."""
    return "" if result_row["variant"] == "all" else NOPLACES


def log_comparable_runs(cfg: DictConfig, result: list[dict], ks: list[int]) -> None:
    """One run per baseline in the ``evaluate`` experiment, named (``town_frequency``) and measured
    (``tagging/A_at_10``, ``..._noplaces``) like the models' evaluation runs, so that MLflow's
    compare view puts the baselines beside MCC and LocSens."""
    for level in baselines.LEVELS:
        metrics = {accuracy_metric_name(r["k"], _suffix(r)): r["accuracy"] for r in result if r["level"] == level}
        with stage_run(EVALUATE, f"{level}_frequency", {"model": f"{level} frequency baseline", "ks": ks},
                       tracking_uri=cfg.paths.mlflow_tracking_uri,
                       artifact_root=cfg.paths.get("mlflow_artifact_root"), tags={"stage": "frequency_baselines"}):
            mlflow.log_metrics(mlflow_metrics(metrics))


if __name__ == "__main__":
    run_job(main)
