"""JPEG bytes from the shards to the uint8 batch tensors every image model consumes.

Images travel as uint8 (normalisation happens on the device), tags as CSR (``tag_values``,
``tag_offsets``) so that multi-hot or word-vector targets are built on the device instead of
shipped through worker pipes. MCC's target, one tag drawn per load, is a hash of
(photo_id, seed, epoch): the same whatever the number of ranks and workers.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from common.metrics import TagSets
from training.data.plan import draw_one_tag


def decode_image(jpeg: bytes, resize: Optional[int], crop: int, train: bool,
                 gen: Optional[torch.Generator]) -> np.ndarray:
    """JPEG -> (crop, crop, 3) uint8: short side resized to ``resize`` (None: as stored, but at
    least ``crop``), then a random crop (train) or the centre crop (eval)."""
    im = Image.open(io.BytesIO(jpeg))
    target = max(resize or 0, crop)
    im.draft("RGB", (target, target))  # JPEG DCT scaling: decode no larger than needed
    im = im.convert("RGB")
    w, h = im.size
    short = min(w, h)
    if (resize and short != resize) or short < crop:
        scale = target / short
        im = im.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.BILINEAR)
        w, h = im.size
    if train:
        r = torch.randint(0, 1 << 30, (2,), generator=gen).tolist()
        x, y = r[0] % (w - crop + 1), r[1] % (h - crop + 1)
    else:
        x, y = (w - crop) // 2, (h - crop) // 2
    return np.asarray(im.crop((x, y, x + crop, y + crop)))


def to_batch(table: pa.Table, *, resize: Optional[int], crop: int, train: bool, seed: int, epoch: int,
             gen: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
    """A pyarrow table of shard rows -> the batch dict every model consumes."""
    photo_id = table.column("photo_id").to_numpy().copy()  # arrow buffers are read-only
    tags = TagSets.from_arrow(table.column("tag_ids"))
    images = np.stack([decode_image(b, resize, crop, train, gen)
                       for b in table.column("image").to_pylist()])
    image = torch.from_numpy(images).permute(0, 3, 1, 2)
    if train:
        flip = torch.rand(image.shape[0], generator=gen) < 0.5
        image = torch.where(flip[:, None, None, None], image.flip(-1), image)
    return {
        "photo_id": torch.from_numpy(photo_id),
        "image": image.contiguous(),
        "tag": torch.from_numpy(draw_one_tag(photo_id, tags.offsets, tags.values, seed, epoch)),
        "tag_values": torch.from_numpy(tags.values.copy()),
        "tag_offsets": torch.from_numpy(tags.offsets.copy()),
        "latitude": torch.from_numpy(table.column("latitude").to_numpy().copy()),
        "longitude": torch.from_numpy(table.column("longitude").to_numpy().copy()),
    }


