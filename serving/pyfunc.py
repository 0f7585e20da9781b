"""Trained models as MLflow Models: loadable with ``mlflow.pyfunc.load_model`` and servable with
``mlflow models serve``, each with a signature and an input example. The registry step
(:mod:`serving.register`) logs them into the runs that made the models.

- :class:`MCCTagger` (an image-model run, MCC): a JPEG in, its top tags by MCC's image-tag cosine
  out. Artifacts: the checkpoint and the vocabulary with its tag embeddings (the export's ``tags.parquet``).
- :class:`LocationTagger` (a LocSens or factorised run): a JPEG and a location in, the top tags at
  that location out. Artifacts: the MCC checkpoint and vocabulary it depends on, and its own
  checkpoint, so one model takes an image and a location.
- :class:`PhotoRetriever` (a search gallery built with a retrieval model): a tag and a location in,
  the gallery's best photos out (ids, coordinates, km, scores). Artifacts: the gallery and the checkpoint.

Input: a DataFrame with ``image`` (JPEG bytes; base64 text over REST) and, for the location model,
``latitude`` and ``longitude``. Output: one row per input with ``tags`` and ``scores`` (best
first). Parameter ``k`` (default 10). The classes are this project's: loading needs it installed
(``pip install -e .``; ``mlflow models serve --env-manager local``).
"""
from __future__ import annotations

import base64
import io
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from mlflow.models import infer_signature
from PIL import Image

from common.contract import shard_root
from common.embeddings import arrow_to_embeddings
from serving.gallery import Gallery
from serving.scorers import ImageEmbedder, Scorer
from training.index.ann import normalised
from training.index.spatial import check_coordinates
from training.models.family import SERVES_IMAGE, SERVES_LOCATION

#: The name every run logs its model under; the run's ``model_uri`` tag holds its ``models:/`` URI.
MODEL_NAME = "model"
DEFAULT_K = 10
#: The most answers one input row may ask for (parameter ``k``): a bound on the work and the reply.
MAX_K = 1000


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
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k={k}: must be between 1 and {MAX_K}")
    return k


class MCCTagger(mlflow.pyfunc.PythonModel):
    """MCC: an image's top tags by the cosine of its embedding with every tag embedding."""

    def load_context(self, context) -> None:
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
        self.embedder = ImageEmbedder(context.artifacts["mcc_checkpoint"])
        self.scorer = Scorer(context.artifacts["tagger_checkpoint"])
        self.tag_names, self.tag_vectors = _read_vocabulary(context.artifacts["vocabulary"])
        self.unit_tags = normalised(self.tag_vectors)        # once, not per request

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
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
    gallery's best photos for them out (shortlist and rerank, as ``python -m serving.search photos``)."""

    def load_context(self, context) -> None:
        self.gallery = Gallery(context.artifacts["gallery"])
        self.scorer = Scorer(context.artifacts["retriever_checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
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
    files = sorted(shard_root(shards_dir).glob("test/*.parquet")) if shards_dir else []
    if files:
        pf = pq.ParquetFile(files[0])
        if pf.metadata.num_rows:
            row = pf.read_row_group(0, columns=["image", "latitude", "longitude"]).slice(0, 1).to_pylist()[0]
            return row["image"], float(row["latitude"]), float(row["longitude"])
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="JPEG")
    return buf.getvalue(), 0.0, 0.0


#: A gallery's retrieval model (:class:`PhotoRetriever`), beside the families' ``serves`` kinds.
RETRIEVAL = "retrieval"
#: How a model is served (``Family.serves``, or :data:`RETRIEVAL`) -> its MLflow Model class.
MODELS: dict[str, type[mlflow.pyfunc.PythonModel]] = {
    SERVES_IMAGE: MCCTagger, SERVES_LOCATION: LocationTagger, RETRIEVAL: PhotoRetriever}


def tagger_inputs(kind: str, *, image_model: str, vocabulary: str, checkpoint: str,
                  shards_dir: Optional[str | Path]) -> tuple[dict[str, str], pd.DataFrame]:
    """Artifacts and input example of a tagging model: an image model (``kind`` image) or a
    location model (``location``, with the image model it reads)."""
    jpeg, lat, lon = example_jpeg(shards_dir)
    if kind == SERVES_IMAGE:
        return {"mcc_checkpoint": image_model, "vocabulary": vocabulary}, pd.DataFrame({"image": [jpeg]})
    return ({"mcc_checkpoint": image_model, "vocabulary": vocabulary, "tagger_checkpoint": checkpoint},
            pd.DataFrame({"image": [jpeg], "latitude": [lat], "longitude": [lon]}))


def retriever_inputs(gallery_dir: str | Path, checkpoint: str) -> tuple[dict[str, str], pd.DataFrame]:
    """Artifacts and input example of a gallery's retrieval model: a tag of its first photo at
    that photo's place."""
    gallery = Gallery(gallery_dir)
    first = gallery.tags_of(0)
    tag = gallery.tag_names[int(first[0])] if first.size else gallery.tag_names[0]
    example = pd.DataFrame({"tag": [tag], "latitude": [float(gallery.latitude[0])],
                            "longitude": [float(gallery.longitude[0])]})
    return {"gallery": str(gallery_dir), "retriever_checkpoint": checkpoint}, example


def log_model(kind: str, artifacts: dict[str, str], example: pd.DataFrame) -> str:
    """Log the active run's model (``kind``: a key of :data:`MODELS`) with its signature and input
    example (predicted once here, which also proves it loads); its ``models:/`` URI."""
    if kind not in MODELS:
        raise ValueError(f"model kind must be one of {sorted(MODELS)}, got {kind!r}")
    model = MODELS[kind]()          # the logged instance stays empty: weights travel as artifacts
    context = mlflow.pyfunc.PythonModelContext(artifacts=artifacts, model_config={})
    loaded = MODELS[kind]()
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
    out = []
    for name in ("mlflow", "torch", "torchvision", "pytorch-lightning", "numpy", "pandas", "pyarrow", "pillow",
                 "scikit-learn", "faiss-cpu", "geographiclib"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out
