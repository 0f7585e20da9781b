"""MLflow's own UI, in headless Chromium, over runs made by the project's tracking code: experiments
open on their runs with a description, a demo's runs sit under one parent, a run page links the
runs it used, the chart view has P@10 against distance, and no telemetry banner is shown."""
from __future__ import annotations

import sys

import mlflow
import pytest
from helpers.embeddings import write_embeddings
from helpers.servers import chromium, free_port, needs_browser, serving

from common import metrics as M
from common.embeddings import EmbeddingsManifest
from common.tracking import DESCRIPTIONS, GROUP_ENV, describe, link_runs, producer, stage_run
from training.evaluate.runs import embeddings_tags, log_evaluation

pytestmark = pytest.mark.slow          # a real mlflow server and a browser
GROUP = "demo 2026-11-30T17:00:00Z"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tracking store as one demo leaves it: a shard job, a training run that read its shards
    and exported embeddings, and two evaluation runs (one scored the training run's model, one its
    export), all in one run group."""
    root = tmp_path_factory.mktemp("mlflow_ui")
    uri = f"sqlite:///{root}/mlruns.db"
    mp = pytest.MonkeyPatch()
    mp.setenv(GROUP_ENV, GROUP)
    try:
        with stage_run("pipeline/shard_dataset", "shard_dataset", {"shard": {"rows_per_file": 100}}, tracking_uri=uri,
                       artifact_root=str(root / "art")):
            shards = producer()
        with stage_run("train", "mcc", {"model": "MCC"}, tracking_uri=uri, artifact_root=str(root / "art")):
            training = producer()
        client = mlflow.MlflowClient(uri)
        link_runs(client, upstream=shards, downstream=training, what="shards")
        export = write_embeddings(root / "export")
        manifest = EmbeddingsManifest.read(export)
        manifest.extra["mlflow_run"] = training
        (export / "manifest.json").write_text(manifest.to_json())
        runs = {}
        for name, scale, tags in (("mcc", 1.0, {"train_run_id": training["run_id"]}),
                                  ("mcc_export", 2.0, {})):
            metrics = {n: scale * (i + 1) for i, n in enumerate(M.evaluation_metric_names())}
            runs[name] = log_evaluation(metrics, {"model": name}, tracking_uri=uri, artifact_root=str(root / "art"),
                                        run_name=name, tags={**embeddings_tags(export), **tags})
    finally:
        mp.undo()
    return root, uri, training, runs


@pytest.fixture(scope="module")
def ui(store):
    """``mlflow server`` over the store on loopback, as a real process (telemetry off as the project sets it)."""
    root, uri, *_ = store
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                  "--port", str(port), "--workers", "1"], f"{base}/health", timeout=180, cwd=root):
        yield base


@needs_browser
def test_the_mlflow_ui_opens_on_runs_linked_and_grouped(store, ui, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, uri, training, runs = store
    client = mlflow.MlflowClient(uri)
    evaluate = client.get_experiment_by_name("evaluate").experiment_id

    def text(d) -> str:
        return d.find_element(By.TAG_NAME, "body").text

    with chromium() as driver:
        wait = WebDriverWait(driver, 90)
        # The experiments list (make ui's URL): every experiment with its one-line description.
        driver.get(f"{ui}/#/experiments?workflowType=machine_learning")
        wait.until(lambda d: DESCRIPTIONS["evaluate"] in text(d))
        page = text(driver)
        for name in ("train", "evaluate", "pipeline/shard_dataset"):
            assert describe(name) in page
        assert "telemetry" not in page.lower()
        driver.save_screenshot(str(tmp_path / "experiments.png"))

        # The evaluate experiment opens on its runs table: the demo's parent run, its runs below it.
        driver.get(f"{ui}/#/experiments/{evaluate}/runs?workflowType=machine_learning")
        wait.until(lambda d: GROUP in text(d))
        assert "Run Name" in text(driver) and "/overview" not in driver.current_url      # not the GenAI overview
        driver.find_element(By.XPATH, f"//*[text()='{GROUP}']/ancestor::*[@role='row']//button").click()
        wait.until(lambda d: "mcc_export" in text(d))
        assert "mcc-embeddings" in text(driver)                      # the Dataset column names the export
        driver.save_screenshot(str(tmp_path / "runs.png"))
        # The chart view of the demo's evaluation runs: P@10 against distance is one chart.
        chart = driver.find_element(By.CSS_SELECTOR, "input[name='runs-view-mode'][value='CHART']")
        driver.execute_script("arguments[0].click()", chart)
        # The chart view's filter box: the input whose hint text reads "Search metric charts".
        search = wait.until(lambda d: d.find_element(By.XPATH, "//input[@*='Search metric charts']"))
        search.send_keys("by_km")
        wait.until(lambda d: f"mcc_export ({M.P10_BY_KM})" in text(d) and f"mcc ({M.P10_BY_KM})" in text(d))
        driver.save_screenshot(str(tmp_path / "charts.png"))

        # An evaluation run's page: its parent, and a link to the training run whose model it scored.
        driver.get(f"{ui}/#/experiments/{evaluate}/runs/{runs['mcc']}")
        wait.until(lambda d: "Uses the model of" in text(d))
        links = [a.get_attribute("href") for a in driver.find_elements(By.TAG_NAME, "a")]
        assert any(h and h.endswith(f"/runs/{training['run_id']}") for h in links), links
        assert GROUP in text(driver)
        # ... and the training run links back to the job whose shards it read and on to its evaluation.
        driver.get(f"{ui}/#/experiments/{training['experiment_id']}/runs/{training['run_id']}")
        wait.until(lambda d: "Uses the shards of" in text(d))
        links = [a.get_attribute("href") or "" for a in driver.find_elements(By.TAG_NAME, "a")]
        assert any(h.endswith(f"/runs/{runs['mcc']}") for h in links) and any("shard_dataset" in a.text for a in
                                                                              driver.find_elements(By.TAG_NAME, "a"))
    assert (tmp_path / "runs.png").stat().st_size > 10000
