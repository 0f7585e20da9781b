"""Trained models as MLflow Models: loadable with ``mlflow.pyfunc.load_model`` and servable with
``mlflow models serve``, each with a signature and an input example.

- :class:`MCCTagger` (an MCC run): a JPEG in, its top tags by MCC's image-tag cosine out. Artifacts:
  the checkpoint and the vocabulary with its tag embeddings (``tags.parquet`` of the export).
- :class:`LocationTagger` (a LocSens or factorised run): a JPEG and a location in, the top tags at
  that location out. Artifacts: the MCC checkpoint and vocabulary it depends on, and its own
  checkpoint, so one model takes an image and a location.
- :class:`PhotoRetriever` (a search-index build with a retrieval model): a tag and a location in,
  the indexed gallery's best photos out (ids, coordinates, km, scores). Artifacts: the gallery and the checkpoint.

Input: a DataFrame with ``image`` (JPEG bytes; base64 text over REST) and, for the location model,
``latitude`` and ``longitude``. Output: one row per input with ``tags`` and ``scores`` (best
first). Parameter ``k`` (default 10). The classes are this project's: loading needs it installed
(``pip install -e .``; ``mlflow models serve --env-manager local``).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Optional

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from common.embeddings import arrow_to_embeddings
from training.index.ann import normalised

#: The name every run logs its model under; the run's ``model_uri`` tag holds its ``models:/`` URI.
MODEL_NAME = "model"
DEFAULT_K = 10


def _read_vocabulary(path: str) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path).sort_by("index")
    return table.column("tag").to_pylist(), np.array(arrow_to_embeddings(table.column("embedding")))


def _jpeg(value: Any) -> bytes:
    """JPEG bytes from a DataFrame cell: bytes, or base64 text (how JSON carries binary)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError(f"image: text that is not base64 ({exc})") from exc
    raise ValueError(f"image: expected JPEG bytes or base64 text, got {type(value).__name__}")


def _k(params: Optional[dict[str, Any]]) -> int:
    k = int((params or {}).get("k", DEFAULT_K))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


class MCCTagger(mlflow.pyfunc.PythonModel):
    """MCC: an image's top tags by the cosine of its embedding with every tag embedding."""

    def load_context(self, context) -> None:
        from training.serving.scorers import ImageEmbedder

        self.embedder = ImageEmbedder(context.artifacts["mcc_checkpoint"])
        self.tag_names, tag_vectors = _read_vocabulary(context.artifacts["vocabulary"])
        self.unit_tags = normalised(tag_vectors)

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        k = min(_k(params), len(self.tag_names))
        tags, scores = [], []
        for value in model_input["image"]:
            cosine = self.unit_tags @ normalised(self.embedder(_jpeg(value)))[0]
            best = np.argsort(-cosine, kind="stable")[:k]
            tags.append([self.tag_names[t] for t in best])
            scores.append([float(cosine[t]) for t in best])
        return pd.DataFrame({"tags": tags, "scores": scores})


class LocationTagger(mlflow.pyfunc.PythonModel):
    """LocSens (or the factorised model) with the MCC it reads: an image's top tags at a location."""

    def load_context(self, context) -> None:
        from training.serving.scorers import ImageEmbedder, Scorer

        self.embedder = ImageEmbedder(context.artifacts["mcc_checkpoint"])
        self.scorer = Scorer(context.artifacts["tagger_checkpoint"])
        self.tag_names, self.tag_vectors = _read_vocabulary(context.artifacts["vocabulary"])
        self.unit_tags = normalised(self.tag_vectors)        # once, not per request

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        from training.index.spatial import check_coordinates

        k = min(_k(params), len(self.tag_names))
        check_coordinates(model_input["latitude"].to_numpy(), model_input["longitude"].to_numpy())
        tags, scores = [], []
        for value, lat, lon in zip(model_input["image"], model_input["latitude"], model_input["longitude"]):
            best, score = self.scorer.top_tags(self.embedder(_jpeg(value)), self.tag_vectors, float(lat), float(lon), k,
                                               unit_tags=self.unit_tags)
            tags.append([self.tag_names[t] for t in best])
            scores.append([float(s) for s in score])
        return pd.DataFrame({"tags": tags, "scores": scores})


class PhotoRetriever(mlflow.pyfunc.PythonModel):
    """LocSens (or the factorised model) over an indexed gallery: a tag and a location in, the
    gallery's best photos for them out (shortlist and rerank, as ``python -m training.search photos``)."""

    def load_context(self, context) -> None:
        from training.index.gallery import Gallery
        from training.serving.scorers import Scorer

        self.gallery = Gallery(context.artifacts["gallery"])
        self.scorer = Scorer(context.artifacts["retriever_checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        from training.index.spatial import check_coordinates

        k = min(_k(params), len(self.gallery))
        check_coordinates(model_input["latitude"].to_numpy(), model_input["longitude"].to_numpy())
        out: dict[str, list] = {"photo_ids": [], "latitudes": [], "longitudes": [], "km": [], "scores": []}
        for tag, lat, lon in zip(model_input["tag"], model_input["latitude"], model_input["longitude"]):
            photos, _ = self.gallery.photos(self.scorer, self.gallery.tag_index(str(tag)), float(lat), float(lon), k)
            out["photo_ids"].append([p["photo_id"] for p in photos])
            out["latitudes"].append([p["latitude"] for p in photos])
            out["longitudes"].append([p["longitude"] for p in photos])
            out["km"].append([p["km"] for p in photos])
            out["scores"].append([p["score"] for p in photos])
        return pd.DataFrame(out)


def example_jpeg(shards_dir: Optional[str | Path]) -> tuple[bytes, float, float]:
    """A test photo (JPEG bytes, latitude, longitude) for the input example: the first of the test
    shards when there are shards, else a small grey JPEG at (0, 0)."""
    files = sorted(Path(shards_dir).glob("test/*.parquet")) if shards_dir else []
    if files:
        pf = pq.ParquetFile(files[0])
        if pf.metadata.num_rows:
            row = pf.read_row_group(0, columns=["image", "latitude", "longitude"]).slice(0, 1).to_pylist()[0]
            return row["image"], float(row["latitude"]), float(row["longitude"])
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="JPEG")
    return buf.getvalue(), 0.0, 0.0


def log_model(kind: str, *, mcc_checkpoint: Optional[str] = None, vocabulary: Optional[str] = None,
              tagger_checkpoint: Optional[str] = None, shards_dir: Optional[str | Path] = None,
              gallery: Optional[str | Path] = None, retriever_checkpoint: Optional[str] = None,
              example_tag: Optional[str] = None, example_place: tuple[float, float] = (0.0, 0.0)) -> str:
    """Log the active run's model (``kind``: ``mcc``, ``location`` or ``retrieval``) with its
    signature and input example (predicted once here, which also proves it loads); its ``models:/`` URI."""
    from mlflow.models import infer_signature

    if kind == "retrieval":
        artifacts = {"gallery": str(gallery), "retriever_checkpoint": str(retriever_checkpoint)}
        example = pd.DataFrame({"tag": [example_tag], "latitude": [example_place[0]],
                                "longitude": [example_place[1]]})
        model: mlflow.pyfunc.PythonModel = PhotoRetriever()
    else:
        jpeg, lat, lon = example_jpeg(shards_dir)
        artifacts = {"mcc_checkpoint": str(mcc_checkpoint), "vocabulary": str(vocabulary)}
        example = pd.DataFrame({"image": [jpeg]})
        if kind == "location":
            artifacts["tagger_checkpoint"] = str(tagger_checkpoint)
            example = example.assign(latitude=[lat], longitude=[lon])
            model = LocationTagger()
        elif kind == "mcc":
            model = MCCTagger()
        else:
            raise ValueError(f"model kind must be mcc, location or retrieval, got {kind!r}")
    loaded = type(model)()          # the logged instance stays empty: weights travel as artifacts
    context = mlflow.pyfunc.PythonModelContext(artifacts=artifacts, model_config={})
    loaded.load_context(context)
    output = loaded.predict(context, example, {"k": DEFAULT_K})
    signature = infer_signature(example, output, params={"k": DEFAULT_K})
    info = mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=model, artifacts=artifacts, signature=signature,
                                   input_example=example, pip_requirements=requirements())
    return info.model_uri


def requirements() -> list[str]:
    """What loading the model imports, pinned to this environment's versions (stated rather than
    inferred: MLflow's inference loads the model in a subprocess). The project itself must be
    installed too (``pip install -e .`` from its repository)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "torch", "torchvision", "pytorch-lightning", "numpy", "pandas", "pyarrow", "pillow",
                 "scikit-learn", "faiss-cpu", "geographiclib"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def log_inputs(datamodule) -> None:
    """Record in the active run the dataset a training run read, by MLflow's dataset tracking: the
    embeddings export (LocSens, factorised; digest = its export id) or the shards (image models;
    digest = a hash of their manifest)."""
    import hashlib

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from common.contract import MANIFEST_NAME

    embeddings = getattr(datamodule, "embeddings_dir", None)
    if embeddings is not None:
        path, name, digest = Path(embeddings) / MANIFEST_NAME, "mcc-embeddings", datamodule.manifest.export_id
    else:
        path, name = Path(datamodule.shards_dir) / MANIFEST_NAME, "shards"
        digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else ""
    source = resolve_dataset_source(path.resolve().parent.as_uri())
    mlflow.log_input(MetaDataset(source, name=name, digest=(digest or "unknown")[:32]), context="training")
