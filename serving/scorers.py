"""Checkpoints loaded once to answer requests: an image model (MCC) that embeds a JPEG, and a
location-sensitive model (LocSens or factorised) that scores (image, tag, location) triplets.

Shared by ``python -m serving.search`` and the MLflow Models (:mod:`serving.pyfunc`). A checkpoint
names its model family (:func:`training.models.family_of_checkpoint`), which says the class.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from training.data.images import decode_image
from training.index.ann import normalised
from training.models import family_of_checkpoint, model_class
from training.models.family import SERVES_IMAGE, SERVES_LOCATION
from training.models.locations import normalise_location


class NotAnImage(ValueError):
    """Bytes that do not decode as an image."""


class ImageTooLarge(ValueError):
    """An image over the pixel limit (a decompression bomb among them): refused before decoding."""


#: Image formats a request may send (Pillow's names), and what a refusal calls them.
IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
#: The largest image (width x height) decoded by default: 40 Mpx, a large phone photo twice over.
MAX_PIXELS = 40_000_000


def check_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) of an upload, read from its header alone; :class:`NotAnImage` for a
    format outside :data:`IMAGE_TYPES` or no image, :class:`ImageTooLarge` above ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                kind, (w, h) = im.format, im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"an image over the pixel limit ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"not an image this can read ({exc}); send one of {', '.join(IMAGE_TYPES.values())}") \
            from None
    if kind not in IMAGE_TYPES:
        raise NotAnImage(f"a {kind} image; send one of {', '.join(IMAGE_TYPES.values())}")
    if w * h > max_pixels:
        raise ImageTooLarge(f"an image of {w:,} x {h:,} pixels, over the limit of {max_pixels:,}")
    return kind, w, h


class NotAModel(ValueError):
    """A checkpoint that is not of the kind of model asked for (or names no model family)."""


class ImageEmbedder:
    """An image model's (MCC's) embedding of a JPEG, preprocessed as evaluation preprocesses the
    shards (resize, centre crop from the checkpoint's data settings)."""

    def __init__(self, checkpoint: str, max_pixels: int = MAX_PIXELS):
        self.max_pixels = max_pixels
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        cls = _model_class(state, checkpoint, SERVES_IMAGE)
        hp, dm = dict(state["hyper_parameters"]), dict(state.get("datamodule_hyper_parameters") or {})
        hp["backbone"] = {**hp["backbone"], "pretrained": False}        # the checkpoint holds the weights
        self.model = cls(**hp, optimizer=None)
        self.model.load_state_dict(state["state_dict"])
        self.model.eval()
        self.resize, self.crop = dm.get("resize"), int(dm.get("crop", 224))

    @torch.no_grad()
    def __call__(self, jpeg: bytes) -> np.ndarray:
        """(1, d) embedding; :class:`NotAnImage` when the bytes are no image (of an allowed type),
        :class:`ImageTooLarge` above the pixel limit."""
        check_image(jpeg, self.max_pixels)
        try:
            pixels = decode_image(jpeg, self.resize, self.crop, train=False, gen=None)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise NotAnImage(f"not an image this can read ({exc})") from exc
        return self.model.embed(torch.from_numpy(pixels)[None]).float().numpy()


class Scorer:
    """A trained location-sensitive network (LocSens or factorised) scoring (image, tag, location)
    triplets by its ``forward`` (broadcast over the leading dimension)."""

    def __init__(self, checkpoint: str):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        cls = _model_class(state, checkpoint, SERVES_LOCATION)
        model = cls.load_from_checkpoint(checkpoint, map_location="cpu", optimizer=None, weights_only=True)
        self.net = model.net.eval()
        self.family = cls.family
        self.kind = cls.__name__
        self.weight = 0.0 if model.variant == "zeroed" else None

    @torch.no_grad()
    def __call__(self, images: np.ndarray, tag_ids: np.ndarray, tag_table: np.ndarray, lat: float,
                 lon: float) -> np.ndarray:
        """Scores of images (n or 1, d) with vocabulary tags ``tag_ids`` (n or 1) at one location."""
        images = torch.as_tensor(images, dtype=torch.float32)
        tag_ids = torch.as_tensor(np.atleast_1d(tag_ids), dtype=torch.int64)
        table = torch.as_tensor(tag_table, dtype=torch.float32)
        n = max(images.shape[0], tag_ids.shape[0])
        loc = normalise_location(torch.tensor([lat], dtype=torch.float32), torch.tensor([lon], dtype=torch.float32))
        images, tag_ids, loc = images.expand(n, -1), tag_ids.expand(n), loc.expand(n, -1)
        return self.net.score_tag_ids(images, tag_ids, loc, table, self.weight).float().numpy()

    def top_tags(self, image: np.ndarray, tag_table: np.ndarray, lat: float, lon: float, k: int,
                 shortlist: int | None = 500, unit_tags: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(tag indices, scores) of the ``k`` best tags for one image at one place: the
        ``shortlist`` best by the image model's cosine, ranked by this model (None: every tag).
        ``unit_tags``: ``tag_table`` already L2-normalised (a server normalises it once, not per request)."""
        v = tag_table.shape[0]
        if shortlist is None:
            candidates = np.arange(v)
        else:
            unit = normalised(tag_table) if unit_tags is None else unit_tags
            cosine = unit @ normalised(image)[0]
            candidates = np.argsort(-cosine, kind="stable")[:min(max(shortlist, k), v)]
        scores = self(image, candidates, tag_table, lat, lon)
        order = np.argsort(-scores, kind="stable")[:k]
        return candidates[order], scores[order]


def _model_class(state: dict, checkpoint: str, serves: str) -> type:
    """The model class a checkpoint was saved by, which must serve as ``serves`` says."""
    try:
        family = family_of_checkpoint(state, checkpoint)
    except ValueError as exc:
        raise NotAModel(str(exc)) from None
    if family.serves != serves:
        raise NotAModel(f"{checkpoint}: a {family.label} checkpoint, not a model that serves {serves!r}")
    return model_class(family.name)
