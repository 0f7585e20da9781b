"""The results report: rows named by the model family's record, the paper's tables beside ours,
figures, repeats with their spread, and the MLflow round trip."""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
from helpers.config import compose

from common.embeddings import MANIFEST_NAME, EmbeddingsManifest
from common.metrics import mlflow_metrics
from training.evaluate.runs import model_tags
from training.models import family_named
from training.report.build import build_report
from training.report.results import Tables, assign, baseline_results, collect_results, family_row, summarise
from training.report.tables import location_table, noplaces_table, queries_note, summary_table, tagging_table

DISTANCES = ("agnostic", "2500km", "750km", "200km", "25km", "1km")


def _tags(family: str, tasks: str, variant: str | None = None) -> dict[str, str]:
    """An evaluation run's tags saying what it scored (training.evaluate.runs)."""
    return model_tags(family_named(family), tasks.split(","), variant)


def test_baseline_metric_names_map_to_the_rows_names():
    got = baseline_results({"baselines/town/A_at_1": 50.0, "baselines/town/A_at_10_noplaces": 30.0,
                            "seconds/total": 3.0})
    assert list(got) == ["town_frequency"] and got["town_frequency"].label == "Town frequency"
    assert got["town_frequency"].mean == {"tagging/A@1": 50.0, "tagging/A@10_noplaces": 30.0}


def test_tables_put_the_paper_beside_ours():
    mcc = {"tagging/A@1": 12.345, "tagging/A@10": 40.0, "tagging/A@10_noplaces": 20.0,
           **{f"retrieval/P@10_{g}": 10.0 for g in DISTANCES}}
    results = {**dict([family_row("mcc", None, None, [mcc])]),
               **baseline_results({"baselines/town/A_at_1": 50.0})}
    tagging = tagging_table(results)
    assert "| MCC (1 run, single seed) | 12.35 (20.32) | 40.00 (47.64) | - (68.05) |" in tagging
    assert tagging.index("Town frequency") < tagging.index("MCC")         # the paper's row order
    assert "| MCC (1 run, single seed) | - (15.15) | 20.00 (36.75) | - (51.80) |" in noplaces_table(results)
    assert "| MCC (1 run, single seed) | 10.00 (42.18) | 10.00 (29.23) |" in location_table(results)


def test_each_table_reports_the_model_trained_for_its_task():
    """Tagging tables: the tagging-trained raw model; retrieval table: the retrieval-trained one
    when it was run (else the tagging one); retrieval-only models never enter the tagging tables."""
    dist = lambda v: {f"retrieval/P@10_{g}": v for g in DISTANCES}
    tagging_raw = family_row("locsens", "raw", None, [{"tagging/A@1": 30.0, "tagging/A@1_noplaces": 20.0,
                                                       **dist(11.0)}])
    retrieval_raw = family_row("locsens", "raw", None, [{"tagging/A@1": 5.0, "tagging/A@1_noplaces": 4.0,
                                                         **dist(22.0)}])
    sigma = family_row("locsens", "sampling", 0.0, [{"tagging/A@1": 6.0, "tagging/A@1_noplaces": 3.0, **dist(33.0)}])
    assert tagging_raw[0] == retrieval_raw[0] == "locsens_raw" and sigma[0] == "locsens_sigma_0"
    groups = {("locsens_raw", "tagging"): (tagging_raw[1], frozenset({"tagging"})),
              ("locsens_raw", "retrieval"): (retrieval_raw[1], frozenset({"retrieval"})),
              ("locsens_sigma_0", "retrieval"): (sigma[1], frozenset({"retrieval"}))}
    tables = assign(groups)
    assert "| LocSens - raw locations (1 run, single seed) | 30.00 (28.10) |" in tagging_table(tables.tagging)
    assert "| LocSens - raw locations (1 run, single seed) | 20.00 (17.34) |" in noplaces_table(tables.tagging)
    assert "sigma" not in tagging_table(tables.tagging) and "sigma" not in noplaces_table(tables.tagging)
    location = location_table(tables.retrieval)
    assert "| LocSens - raw locations (1 run, single seed) | 22.00 (32.74) |" in location and "sigma=0 (1 run, single seed) | 33.00 (35.95)" in location
    del groups[("locsens_raw", "retrieval")]
    assert "| LocSens - raw locations (1 run, single seed) | 11.00 (32.74) |" in location_table(assign(groups).retrieval)


def test_the_report_says_how_many_queries_and_flags_rows_that_differ():
    rows = dict([family_row("mcc", None, None, [{"retrieval/queries_locations": 757.0}]),
                 family_row("locsens", "raw", None, [{"retrieval/queries_locations": 757.0}])])
    assert "same 757 location-sensitive queries" in queries_note(rows)
    rows.update([family_row("locsens", "sampling", 0.0, [{"retrieval/queries_locations": 500.0}])])
    note = queries_note(rows)
    assert note.startswith("**Not comparable:**") and "sigma=0 500" in note and "MCC 757" in note


def test_report_reads_mlflow_and_draws_figures(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("evaluate")
    metrics = {f"retrieval/P@10_{g}": v for g, v in zip(DISTANCES, (40, 30, 25, 20, 15, 5))}
    for name, shift, sigma, tags in (("mcc", 0.0, None, _tags("mcc", "tagging,retrieval")),
                                     ("locsens_sigma_1", 1.0, 1.0, _tags("locsens", "retrieval", "sampling")),
                                     ("locsens_sigma_0", -1.0, 0.0, _tags("locsens", "retrieval", "sampling")),
                                     ("an old run", 0.0, None, {})):
        with mlflow.start_run(experiment_id=exp, run_name=name, tags=tags):
            if sigma is not None:           # a snapshot's evaluation run records its sigma
                mlflow.log_param("sigma", sigma)
            mlflow.log_metrics(mlflow_metrics({**{k: v + shift for k, v in metrics.items()}, "tagging/A@10": 30 + shift}))
    cfg = compose("report", f"paths.root_dir={tmp_path}", f"paths.mlflow_tracking_uri={uri}")
    report = build_report(cfg)
    text = report.read_text()
    assert "| MCC (1 run, single seed) | - (20.32) | 30.00 (47.64) |" in text and "sigma=0 (1 run, single seed) |" in text
    assert (report.parent / "figures" / "p10_by_granularity.png").stat().st_size > 1000
    assert (report.parent / "figures" / "p10_vs_sigma.png").exists()
    runs = mlflow.search_runs(experiment_names=["report"], output_format="list")
    assert runs and any(a.path == "report.md" for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id))
    saved = json.loads((report.parent / "results.json").read_text())
    assert list(saved["retrieval"]) == ["mcc", "locsens_sigma_1", "locsens_sigma_0"]     # the table's order
    assert saved["retrieval"]["locsens_sigma_1"]["mean"]["retrieval/P@10_agnostic"] == 41.0
    assert saved["retrieval"]["mcc"]["runs"] == 1 and saved["retrieval"]["mcc"]["sd"] == {}


def test_repeats_are_averaged_with_their_spread():
    mean, sd = summarise([{"retrieval/P@10_agnostic": 20.0, "tagging/A@1": 5.0}, {"retrieval/P@10_agnostic": 22.0}])
    assert mean["retrieval/P@10_agnostic"] == 21.0 and abs(sd["retrieval/P@10_agnostic"] - 2 ** 0.5) < 1e-9
    assert mean["tagging/A@1"] == 5.0 and "tagging/A@1" not in sd       # one value: no spread
    assert summarise([{"tagging/A@1": 5.0}]) == ({"tagging/A@1": 5.0}, {})
    key, row = family_row("locsens", "sampling", 1.0, [{"retrieval/P@10_agnostic": 20.0},
                                                       {"retrieval/P@10_agnostic": 22.0}])
    assert row.runs == 2
    assert "| LocSens - location sampling, sigma=1 (2 runs) | 21.00 ± 1.41 (40.60) |" in location_table({key: row})
    key, row = family_row("locsens", "sampling", 1.0, [{"retrieval/P@10_agnostic": 20.0}])
    assert "| LocSens - location sampling, sigma=1 (1 run, single seed) | 20.00 (40.60) |" in location_table({key: row})


def test_the_summary_says_when_its_tagging_and_retrieval_columns_have_different_runs():
    """The summary joins a tagging model and a retrieval model in one row: three seeds of the one
    and a single run of the other must not read as three runs of both."""
    tables = Tables()
    tables.tagging.update([family_row("locsens", "raw", None, [{"tagging/A@1": a} for a in (30.0, 32.0, 34.0)])])
    tables.retrieval.update([family_row("locsens", "raw", None, [{"retrieval/P@10_agnostic": 21.0}])])
    assert "| LocSens - raw locations (tagging 3 runs; retrieval 1 run, single seed) | 32.00 ± 2.00 (28.10) |" \
        in summary_table(tables)


def _write_manifest(directory: Path, export_id: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    manifest = EmbeddingsManifest(model="MCC", score="cosine", dim=4, num_tags=2, splits={}, export_id=export_id)
    (directory / MANIFEST_NAME).write_text(manifest.to_json())


def test_report_averages_repeats_and_skips_runs_on_overwritten_embeddings(tmp_path):
    """Repeats (same settings but the seed, on the embeddings now on disk) are averaged; a run with
    other settings of the same model, or one made on embeddings since re-exported, is not."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    train, evaluate = mlflow.create_experiment("train"), mlflow.create_experiment("evaluate")
    emb = tmp_path / "embeddings"
    _write_manifest(emb, "new")

    def run(agnostic: float, export_id: str, **params) -> None:
        with mlflow.start_run(experiment_id=train, run_name="locsens_raw_retrieval") as t:
            mlflow.log_params({"model.lr": 0.1, "seed": 1, "data.seed": 1, **params})
        with mlflow.start_run(experiment_id=evaluate, run_name="locsens_raw_retrieval",
                              tags={"train_run_id": t.info.run_id, "embeddings_dir": str(emb),
                                    "embeddings_export_id": export_id, **_tags("locsens", "retrieval", "raw")}):
            mlflow.log_params({"evaluation.min_images": 10})
            mlflow.log_metrics(mlflow_metrics({"retrieval/P@10_agnostic": agnostic}))

    run(50.0, "old")                                  # made on the embeddings before the re-export
    run(30.0, "new", **{"model.lr": 0.5})             # another experiment of the same model
    run(20.0, "new", seed=2, **{"data.seed": 2})
    run(24.0, "new", seed=3, **{"data.seed": 3})      # the latest
    got = collect_results(uri)
    assert "locsens_raw" not in got.tagging                            # a retrieval model
    assert got.retrieval["locsens_raw"].runs == 2 and got.retrieval["locsens_raw"].mean["retrieval/P@10_agnostic"] == 22.0
    _write_manifest(emb, "newer")                     # re-exported since: every run is stale
    assert "locsens_raw" not in collect_results(uri).retrieval


def test_runs_on_a_manifest_without_export_id_count_only_if_made_after_it(tmp_path):
    """Manifests from before export ids: a run that started before the manifest was written
    cannot have scored these embeddings."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    evaluate = mlflow.create_experiment("evaluate")
    emb = tmp_path / "embeddings"
    _write_manifest(emb, "")
    with mlflow.start_run(experiment_id=evaluate, run_name="mcc",
                          tags={"embeddings_dir": str(emb), **_tags("mcc", "tagging,retrieval")}) as run:
        mlflow.log_metrics(mlflow_metrics({"retrieval/P@10_agnostic": 10.0}))
    started = run.info.start_time / 1000.0
    os.utime(emb / MANIFEST_NAME, (started + 60, started + 60))      # written after the run began
    assert "mcc" not in collect_results(uri).retrieval
    os.utime(emb / MANIFEST_NAME, (started - 60, started - 60))
    assert collect_results(uri).retrieval["mcc"].mean["retrieval/P@10_agnostic"] == 10.0


def test_repeats_in_run_directories_of_their_own_are_averaged(tmp_path):
    """MCC's repeats train into directories of their own (LocSens reads the demo's export): paths
    inside a run's directory are not settings, other paths are."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    train, evaluate = mlflow.create_experiment("train"), mlflow.create_experiment("evaluate")

    def run(a1: float, run_dir: Path, seed: int, shards: str = "data/work/shards") -> None:
        emb = run_dir / "embeddings"
        _write_manifest(emb, f"export-{seed}")
        with mlflow.start_run(experiment_id=train, run_name="mcc", tags={"run_dir": str(run_dir.resolve())}) as t:
            mlflow.log_params({"seed": seed, "run_dir": str(run_dir), "data.shards_dir": shards,
                               "callbacks.model_checkpoint.dirpath": f"{run_dir}/checkpoints"})
        with mlflow.start_run(experiment_id=evaluate, run_name="mcc",
                              tags={"train_run_id": t.info.run_id, "embeddings_dir": str(emb.resolve()),
                                    "embeddings_export_id": f"export-{seed}", **_tags("mcc", "tagging,retrieval")}):
            mlflow.log_params({"embeddings_dir": str(emb.resolve())})
            mlflow.log_metrics(mlflow_metrics({"tagging/A@1": a1}))

    run(10.0, tmp_path / "outputs" / "mcc", 12345)
    run(14.0, tmp_path / "outputs" / "repeats" / "mcc_seed1", 1)
    got = collect_results(uri).tagging["mcc"]
    assert got.runs == 2 and got.mean["tagging/A@1"] == 12.0
    run(30.0, tmp_path / "outputs" / "repeats" / "mcc_seed2", 2, shards="other/shards")   # other data: not a repeat
    assert collect_results(uri).tagging["mcc"].mean["tagging/A@1"] == 30.0


def test_repeats_grouped_whatever_the_spelling_of_their_run_directory(tmp_path):
    """The demo trains into ``./outputs/locsens`` and logs its snapshots as ``outputs/locsens/...``;
    a repeat trains into ``outputs/repeats/locsens_seed1``: same experiment. A sibling directory whose
    name merely starts with the run directory's is a different setting."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    train, evaluate = mlflow.create_experiment("train"), mlflow.create_experiment("evaluate")

    emb = tmp_path / "outputs" / "mcc" / "embeddings"
    _write_manifest(emb, "export-1")
    os.utime(emb / MANIFEST_NAME, (0, 0))

    def run(p10: float, run_dir: str, seed: int, checkpoint: str) -> None:
        with mlflow.start_run(experiment_id=train, run_name="locsens",
                              tags={"run_dir": f"/home/u/clone/{run_dir.removeprefix('./')}"}) as t:
            mlflow.log_params({"seed": seed, "run_dir": run_dir})
        with mlflow.start_run(experiment_id=evaluate, run_name="locsens_sigma_1",
                              tags={"train_run_id": t.info.run_id, "embeddings_dir": str(emb.resolve()),
                                    "embeddings_export_id": "export-1", **_tags("locsens", "retrieval", "sampling")}):
            mlflow.log_params({"embeddings_dir": str(emb.resolve()), "checkpoint": checkpoint, "sigma": 1.0})
            mlflow.log_metrics(mlflow_metrics({"retrieval/P@10_agnostic": p10}))

    run(10.0, "./outputs/locsens", 12345, "outputs/locsens/checkpoints/sigma_1.ckpt")
    run(14.0, "outputs/repeats/locsens_seed1", 1, "outputs/repeats/locsens_seed1/checkpoints/sigma_1.ckpt")
    got = collect_results(uri).retrieval["locsens_sigma_1"]
    assert got.runs == 2 and got.mean["retrieval/P@10_agnostic"] == 12.0
    run(30.0, "outputs/repeats/locsens_seed2", 2, "outputs/repeats/locsens_seed2_old/checkpoints/sigma_1.ckpt")
    assert collect_results(uri).retrieval["locsens_sigma_1"].mean["retrieval/P@10_agnostic"] == 30.0
