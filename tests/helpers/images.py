"""Real JPEGs for the image tests of the pipeline: random pixels of a given size, reproducible by seed."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg(w: int, h: int, seed: int) -> bytes:
    """A w x h RGB JPEG of random pixels."""
    pixels = np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()
