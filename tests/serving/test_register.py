"""The registry step (``python -m serving.register``): the MLflow Models it logs into the runs that
made them (loadable, answering as the search CLI does), the registered models with their alias, the
report's view of them, and a model whose files were rewritten since its run, left out."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.config import paths

from common.files import file_stamp
from serving.register import main as register
from serving.register import training_candidates
from serving.search import main as search
from training.evaluate.runs import model_tags
from training.models import family_named
from training.report.build import registry_section
from training.tracking import CHECKPOINT_TAG, IMAGE_MODEL_TAG, STAMPS_TAG, VOCABULARY_TAG


def _run(capsys, main, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_register_logs_loadable_models_into_their_runs(trained, gallery, registered, capsys, tmp_path):
    client = mlflow.MlflowClient(trained.uri)
    runs = {r.data.tags["mlflow.runName"]: r for r in
            client.search_runs([client.get_experiment_by_name("train").experiment_id])}
    jpeg = pq.read_table(next((trained.shards / "test").glob("*.parquet")), columns=["image"]).column("image")[0].as_py()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg)
    mlflow.set_tracking_uri(trained.uri)
    for name, dataset in (("mcc", "shards"), ("locsens_raw", "mcc-embeddings")):
        run = client.get_run(runs[name].info.run_id)
        assert run.data.tags["model_uri"].startswith("models:/")         # MLflow 3's logged model
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == [dataset]
        model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
        assert {c.name for c in model.metadata.get_input_schema().inputs} >= {"image"}
        frame = pd.DataFrame({"image": [jpeg], "latitude": [48.85], "longitude": [2.35]})
        out = model.predict(frame if name != "mcc" else frame[["image"]], params={"k": 4})
        assert len(out) == 1 and len(out["tags"][0]) == 4 and list(out["scores"][0]) == sorted(out["scores"][0])[::-1]
        if name == "locsens_raw":   # the same answer as the search CLI with the same checkpoints
            code, text, _ = _run(capsys, search, "tag", "--image", str(photo), "--lat", "48.85", "--lon", "2.35",
                                 "--k", "4", f"gallery.dir={gallery}", "--json")
            assert [t["tag"] for t in json.loads(text)["tags"]] == list(out["tags"][0])
    # Lineage: LocSens read MCC's export (its run links to MCC's), MCC's evaluation scored MCC's model.
    mcc, locsens = runs["mcc"], runs["locsens_raw"]
    assert locsens.data.tags["lineage.embeddings"] == mcc.info.run_id
    assert f"runs/{locsens.info.run_id})" in mcc.data.tags["mlflow.note.content"]
    assert client.get_run(mcc.data.tags["eval_run_id"]).data.tags["lineage.model"] == mcc.info.run_id
    with pytest.raises(Exception, match="base64"):
        model.predict(pd.DataFrame({"image": ["not base64!"], "latitude": [0.0], "longitude": [0.0]}))


@pytest.mark.slow
def test_register_puts_the_best_of_each_model_in_the_registry_with_an_alias(trained, gallery, registered, capsys):
    client = mlflow.MlflowClient(registered, registry_uri=registered)
    names = {m.name for m in client.search_registered_models()}
    assert names == {"mcc", "locsens-tagging", "locsens-retrieval"}
    for name in names:
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert client.get_registered_model(name).description
    code, out, _ = _run(capsys, register, *paths(trained.root))              # again: nothing new
    assert code == 0 and "registered" not in out.replace("-> version", "") and "logged" not in out
    mlflow.set_tracking_uri(registered)
    model = mlflow.pyfunc.load_model("models:/locsens-retrieval@champion")
    out = model.predict(pd.DataFrame({"tag": ["paris"], "latitude": [48.85], "longitude": [2.35]}), params={"k": 5})
    code, text, _ = _run(capsys, search, "photos", "--tag", "paris", "--near", "48.85,2.35", "--k", "5",
                         f"gallery.dir={gallery}", "--json")
    assert list(out["photo_ids"][0]) == [p["photo_id"] for p in json.loads(text)["photos"]]
    section = registry_section(registered)                  # the report names the versions it shows
    assert "| locsens-tagging | 1 | version 1 | locsens_raw" in section and "models:/mcc@champion" in section


def test_a_model_rewritten_since_its_run_is_not_registered(tmp_path, caplog):
    """A run whose checkpoint was overwritten since (a later run in the same folder) would serve
    another model under its name: left out, with a warning naming the file."""
    files = {name: tmp_path / name for name in ("best.ckpt", "mcc.ckpt", "tags.parquet")}
    for f in files.values():
        f.write_bytes(b"weights")
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("train")
    run = client.create_run(experiment, run_name="locsens_raw", tags={
        **model_tags(family_named("locsens"), ["tagging"], "raw"), CHECKPOINT_TAG: str(files["best.ckpt"]),
        IMAGE_MODEL_TAG: str(files["mcc.ckpt"]), VOCABULARY_TAG: str(files["tags.parquet"]),
        STAMPS_TAG: json.dumps({str(f): file_stamp(f) for f in files.values()})})
    client.create_run(experiment, run_name="mlc", tags=model_tags(family_named("mlc"), ["tagging"]))   # not served
    assert [c.run_id for c in training_candidates(client)] == [run.info.run_id]
    files["best.ckpt"].write_bytes(b"another model's weights")
    with caplog.at_level("WARNING"):
        assert training_candidates(client) == []
    assert f"{files['best.ckpt']} gone or rewritten since the run ended" in caplog.text


def test_the_report_says_when_nothing_is_registered(tmp_path):
    assert registry_section(f"sqlite:///{tmp_path}/none.db").startswith("None yet")


def test_register_without_models_says_so(tmp_path, capsys):
    code, _, err = _run(capsys, register, *paths(tmp_path))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no run in")
