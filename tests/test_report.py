"""The results report: metric mapping, the paper's tables beside ours, figures, MLflow round trip."""
from __future__ import annotations

from pathlib import Path

import mlflow
from hydra import compose, initialize_config_dir

from pipeline.metrics import mlflow_metrics
from training.report import build_report
from training.report_tables import baseline_results, location_table, noplaces_table, tagging_table

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def test_baseline_metric_names_map_to_the_models_names():
    got = baseline_results({"baselines/town/A_at_1": 50.0, "baselines/town/A_at_10_no_places": 30.0,
                            "seconds/total": 3.0})
    assert got == {"town_frequency": {"tagging/A@1": 50.0, "tagging/A@10_noplaces": 30.0}}


def test_tables_put_the_paper_beside_ours():
    results = {"mcc": {"tagging/A@1": 12.345, "tagging/A@10": 40.0, "tagging/A@10_noplaces": 20.0,
                       **{f"retrieval/P@10_{g}": 10.0 for g in ("agnostic", "2500km", "750km", "200km", "25km", "1km")}},
               "town_frequency": {"tagging/A@1": 50.0}}
    tagging = tagging_table(results)
    assert "| MCC | 12.35 (20.32) | 40.00 (47.64) | - (68.05) |" in tagging
    assert tagging.index("Town frequency") < tagging.index("MCC")         # the paper's row order
    assert "| MCC | - (15.15) | 20.00 (36.75) | - (51.80) |" in noplaces_table(results)
    assert "| MCC | 10.00 (42.18) | 10.00 (29.23) |" in location_table(results)


def test_each_table_reports_the_model_trained_for_its_task():
    """Tagging tables: the tagging-trained raw model; retrieval table: the retrieval-trained one
    when it was run (else the tagging one); retrieval-only models never enter the tagging tables."""
    dist = lambda v: {f"retrieval/P@10_{g}": v for g in ("agnostic", "2500km", "750km", "200km", "25km", "1km")}
    results = {"locsens_raw": {"tagging/A@1": 30.0, "tagging/A@1_noplaces": 20.0, **dist(11.0)},
               "locsens_raw_retrieval": {"tagging/A@1": 5.0, "tagging/A@1_noplaces": 4.0, **dist(22.0)},
               "locsens_sigma_0": {"tagging/A@1": 6.0, "tagging/A@1_noplaces": 3.0, **dist(33.0)}}
    assert "| LocSens - raw locations | 30.00 (28.10) |" in tagging_table(results)
    assert "| LocSens - raw locations | 20.00 (17.34) |" in noplaces_table(results)
    assert "sigma" not in tagging_table(results) and "sigma" not in noplaces_table(results)
    location = location_table(results)
    assert "| LocSens - raw locations | 22.00 (32.74) |" in location and "sigma=0 | 33.00 (35.95)" in location
    del results["locsens_raw_retrieval"]
    assert "| LocSens - raw locations | 11.00 (32.74) |" in location_table(results)


def test_report_reads_mlflow_and_draws_figures(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("evaluate")
    metrics = {f"retrieval/P@10_{g}": v for g, v in zip(("agnostic", "2500km", "750km", "200km", "25km", "1km"),
                                                          (40, 30, 25, 20, 15, 5))}
    for name, shift in (("mcc", 0.0), ("locsens_sigma_1", 1.0), ("locsens_sigma_0", -1.0)):
        with mlflow.start_run(experiment_id=exp, run_name=name):
            mlflow.log_metrics(mlflow_metrics({**{k: v + shift for k, v in metrics.items()}, "tagging/A@10": 30 + shift}))
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("report.yaml", overrides=[f"paths.root_dir={tmp_path}", f"paths.mlflow_tracking_uri={uri}"])
    report = build_report(cfg)
    text = report.read_text()
    assert "| MCC | - (20.32) | 30.00 (47.64) |" in text and "sigma=0 |" in text
    assert (report.parent / "figures" / "p10_by_granularity.png").stat().st_size > 1000
    assert (report.parent / "figures" / "p10_vs_sigma.png").exists()
    runs = mlflow.search_runs(experiment_names=["report"], output_format="list")
    assert runs and any(a.path == "report.md" for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id))
