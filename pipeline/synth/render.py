"""Procedural photos: each concept has a colour, texture and shape signature a small CNN can learn.

Images are drawn in batches as numpy arrays (background gradient, texture and shape, all fainter
for a less salient concept; optional town frame and landmark glyph; then jitter and noise) and
encoded to JPEG one by one with Pillow. Everything is a function of the per-photo seed, so a
world regenerates bit-identically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .world import CONCEPTS, VARIANTS, Look, concept_variant

SHAPES = ("none", "circle", "square", "triangle", "ring", "cross", "diamond", "house", "temple",
          "dome", "bridge", "bars")
TEXTURES = ("none", "stripes", "checker", "dots", "waves", "grid")
#: Width of the ambient frame, as a share of the image side: wide enough that a training crop
#: (72 -> 64 px) never removes it.
AMBIENT_WIDTH = 0.1


def look_table() -> tuple[np.ndarray, dict[tuple[int, str], int]]:
    """Flatten every (concept, variant) look into a float table the batch renderer indexes."""
    rows, index = [], {}
    for ci, concept in enumerate(CONCEPTS):
        for variant, look in concept.looks.items():
            index[(ci, variant)] = len(rows)
            rows.append(_look_row(look))
    return np.array(rows, dtype=np.float32), index


def _look_row(look: Look) -> list[float]:
    return [*look.sky, *look.ground, TEXTURES.index(look.texture), *look.texture_color, look.texture_freq,
            look.texture_angle, SHAPES.index(look.shape), *look.shape_color]


def look_ids(concept_idx: np.ndarray, continent_code: np.ndarray) -> np.ndarray:
    """Row of :func:`look_table` for each photo's (concept, continent)."""
    _, index = look_table()
    out = np.empty(len(concept_idx), dtype=np.int32)
    for ci, concept in enumerate(CONCEPTS):
        sel = concept_idx == ci
        if not sel.any():
            continue
        for cont in np.unique(continent_code[sel]):
            m = sel & (continent_code == cont)
            out[m] = index[(ci, concept_variant(concept, str(cont)))]
    return out


def _tri(dx, dy, ax, ay, d, r):
    return (dy > -r) & (dy < r) & (ax < (dy + r) * 0.5)


#: Shape code -> mask from offsets (dx, dy), their absolute values, distance d and radius r.
_SHAPE_FNS = {
    1: lambda dx, dy, ax, ay, d, r: d < r,
    2: lambda dx, dy, ax, ay, d, r: (ax < r * 0.8) & (ay < r * 0.8),
    3: _tri,
    4: lambda dx, dy, ax, ay, d, r: (d < r) & (d > r * 0.55),
    5: lambda dx, dy, ax, ay, d, r: ((ax < r * 0.22) & (ay < r)) | ((np.abs(dy + r * 0.4) < r * 0.18) & (ax < r * 0.6)),
    6: lambda dx, dy, ax, ay, d, r: (ax + ay) < r,
    7: lambda dx, dy, ax, ay, d, r: ((ax < r * 0.7) & (dy > 0) & (dy < r * 0.8))
    | ((dy <= 0) & (dy > -r * 0.8) & (ax < (dy + r * 0.8) * 0.9)),
    8: lambda dx, dy, ax, ay, d, r: ((ax < r) & (dy > r * 0.1) & (dy < r * 0.3))
    | ((ax < r * 0.8) & (dy > -r * 0.1) & (dy < r * 0.1)) | ((ax < r * 0.6) & (dy > -r * 0.3) & (dy < -r * 0.1))
    | ((ax < r * 0.9) & (dy > r * 0.3) & (dy < r) & ((np.floor((dx + r) / (r * 0.3)) % 2) == 0)),
    9: lambda dx, dy, ax, ay, d, r: ((d < r * 0.7) & (dy < 0)) | ((ax < r * 0.7) & (dy >= 0) & (dy < r * 0.8)),
    10: lambda dx, dy, ax, ay, d, r: ((ax < r * 1.2) & (np.abs(dy + r * 0.2 - 0.5 * (dx / r) ** 2 * r) < r * 0.12))
    | ((np.abs(ax - r * 0.9) < r * 0.1) & (dy > -r * 0.2) & (dy < r)),
    11: lambda dx, dy, ax, ay, d, r: (ay < r * 0.9) & (ax < r * 1.3) & ((np.floor((dx + r * 1.3) / (r * 0.35)) % 2) == 0),
}

#: Texture code -> intensity in [0, 1] from rotated coordinates (u, v), frequency and phase.
_TEXTURE_FNS = {
    1: lambda u, v, f, ph: (np.sin(2 * np.pi * (u * f + ph)) > 0.3).astype(np.float32),
    2: lambda u, v, f, ph: ((np.floor(u * f + ph) + np.floor(v * f + ph)) % 2).astype(np.float32),
    3: lambda u, v, f, ph: (np.sqrt(((u * f + ph) % 1 - 0.5) ** 2 + ((v * f + ph) % 1 - 0.5) ** 2) < 0.22).astype(np.float32),
    4: lambda u, v, f, ph: 0.5 + 0.5 * np.sin(2 * np.pi * (v * f + 0.08 * np.sin(2 * np.pi * u * 3) + ph)),
    5: lambda u, v, f, ph: ((((u * f + ph) % 1) < 0.15) | (((v * f + ph) % 1) < 0.15)).astype(np.float32),
}


def _shape_mask(kind: np.ndarray, x: np.ndarray, y: np.ndarray, cx, cy, r) -> np.ndarray:
    """Boolean (B, H, W) shape masks; x (1, 1, W) and y (1, H, 1) in [0, 1]; cx, cy, r (B,).
    Each shape is computed only for the images that carry it."""
    out = np.zeros((len(kind), y.shape[1], x.shape[2]), dtype=bool)
    for code, fn in _SHAPE_FNS.items():
        sel = np.flatnonzero(kind == code)
        if len(sel):
            rr = r[sel, None, None]
            dx, dy = x - cx[sel, None, None], y - cy[sel, None, None]
            ax, ay = np.abs(dx), np.abs(dy)
            out[sel] = fn(dx, dy, ax, ay, np.sqrt(dx * dx + dy * dy), rr)
    return out


def _texture(kind: np.ndarray, x, y, freq, angle, phase) -> np.ndarray:
    """Texture intensity in [0, 1], (B, H, W); freq, angle (degrees), phase are (B,)."""
    out = np.zeros((len(kind), y.shape[1], x.shape[2]), dtype=np.float32)
    for code, fn in _TEXTURE_FNS.items():
        sel = np.flatnonzero(kind == code)
        if len(sel):
            a = np.radians(angle[sel])[:, None, None]
            u = x * np.cos(a) + y * np.sin(a)
            v = -x * np.sin(a) + y * np.cos(a)
            out[sel] = fn(u, v, freq[sel, None, None], phase[sel, None, None])
    return out


def render_batch(looks: np.ndarray, landmark_rgb: np.ndarray, has_landmark: np.ndarray,
                 seeds: np.ndarray, size: int, has_ambient: Optional[np.ndarray] = None,
                 salience: Optional[np.ndarray] = None) -> np.ndarray:
    """Draw a batch of images, uint8 (B, size, size, 3).

    ``looks`` are rows of :func:`look_table`; ``landmark_rgb`` (B, 3) the town's colours, shown as
    a corner glyph where ``has_landmark`` and as the edge frame ("ambient") where ``has_ambient``;
    ``seeds`` one per photo (positions, jitter and noise derive from it); ``salience`` (0.3 .. 1,
    default 1) how prominent the concept is: faint concepts fade towards grey and shrink.
    """
    b = len(seeds)
    rng = np.random.default_rng(np.asarray(seeds, dtype=np.uint64))
    p = rng.random((b, 12)).astype(np.float32)
    col = lambda arr: arr.reshape(b, 1, 1)
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = g[None, :, None], g[None, None, :]
    sal = np.ones(b, np.float32) if salience is None else np.asarray(salience, np.float32)
    fade = (1 - sal)[:, None] * 0.7
    sky = looks[:, 0:3] * (1 - fade) + 128 * fade
    ground = looks[:, 3:6] * (1 - fade) + 128 * fade
    tex_kind, tex_col, tex_freq, tex_angle = looks[:, 6], looks[:, 7:10], looks[:, 10], looks[:, 11]
    shape_kind, shape_col = looks[:, 12], looks[:, 13:16]

    # Background: vertical gradient with a random horizon height and brightness.
    horizon = col(0.35 + 0.3 * p[:, 0])
    t = np.clip((y - horizon) * 4 + 0.5, 0, 1)[..., None]
    img = sky[:, None, None, :] * (1 - t) + ground[:, None, None, :] * t
    # Texture over the whole frame, with random phase and +-10 degree rotation.
    tex = _texture(tex_kind, x, y, tex_freq * (0.85 + 0.3 * p[:, 1]), tex_angle + 20 * (p[:, 2] - 0.5),
                   p[:, 3])[..., None]
    tex = tex * col(0.55 * sal)[..., None]
    img = img * (1 - tex) + tex_col[:, None, None, :] * tex
    # The concept's shape at a random position and scale.
    cx, cy, r = 0.3 + 0.4 * p[:, 4], 0.35 + 0.35 * p[:, 5], (0.18 + 0.12 * p[:, 6]) * (0.55 + 0.45 * sal)
    mask = _shape_mask(shape_kind, x, y, cx, cy, r)[..., None]
    alpha = col(0.3 + 0.7 * sal)[..., None]
    shape_px = shape_col[:, None, None, :] * (0.85 + 0.3 * col(p[:, 7])[..., None])
    img = np.where(mask, alpha * shape_px + (1 - alpha) * img, img)
    # The look of the place: a frame along the edges in the town's colour. Under the brightness
    # jitter below, like the glyph, so it tells the region (hue: longitude) better than the latitude.
    if has_ambient is not None:
        edge = np.minimum(np.minimum(x, 1 - x), np.minimum(y, 1 - y)) < AMBIENT_WIDTH
        frame = (edge & col(np.asarray(has_ambient, bool)))[..., None]
        img = np.where(frame, landmark_rgb[:, None, None, :].astype(np.float32), img)
    # The town landmark: a small square glyph in a random corner.
    corner_x = col(np.where(p[:, 8] < 0.5, 0.04, 0.78))
    corner_y = col(np.where(p[:, 9] < 0.5, 0.04, 0.78))
    glyph = (x >= corner_x) & (x < corner_x + 0.18) & (y >= corner_y) & (y < corner_y + 0.18)
    glyph = (glyph & col(np.asarray(has_landmark, bool)))[..., None]
    img = np.where(glyph, landmark_rgb[:, None, None, :].astype(np.float32), img)
    # Global brightness jitter and sensor noise.
    img *= col(0.85 + 0.3 * p[:, 10])[..., None]
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(8)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_images(root: Path, relpaths: list[str], pixels: np.ndarray, corrupt: np.ndarray) -> int:
    """Write one JPEG per image under ``root``; ``corrupt`` ones are truncated (undecodable)."""
    written = 0
    made: set[str] = set()
    for rel, px, bad in zip(relpaths, pixels, corrupt):
        path = root / rel
        parent = str(path.parent)
        if parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(parent)
        data = encode_jpeg(px)
        path.write_bytes(data[: len(data) // 3] if bad else data)
        written += 1
    return written


__all__ = ["SHAPES", "TEXTURES", "VARIANTS", "look_table", "look_ids", "render_batch", "write_images"]
