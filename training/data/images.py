"""JPEG bytes from the shards to the uint8 batch tensors every image model consumes.

Workers do only what must happen on the CPU: decode (no larger than needed, by JPEG's DCT
scaling), crop, and write the pixels once into the batch's (B, H, W, 4) uint8 array, the layout
PIL decodes to (RGB and a padding byte: packing to 3 bytes on the CPU cost 15% of the decode;
the device drops the 4th byte for free). In a DataLoader worker the batch is made in shared
memory, so that it reaches the main process without another copy. The flip is drawn here (so that it is reproducible per worker) but applied on the
device, with normalisation and the channels_last layout (:meth:`training.models.base.TagModel.features`):
uint8 NHWC is a quarter of float32's bytes through the worker pipe and the host-to-device copy,
and no copy of the batch is made on the CPU after decoding.

Tags travel as CSR (``tag_values``, ``tag_offsets``) so that multi-hot or word-vector targets are
built on the device. MCC's target, one tag drawn per load, is a hash of (photo_id, seed, epoch):
the same whatever the number of ranks and workers.
"""
from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from common.metrics import TagSets
from training.data.plan import draw_one_tag

#: Bytes a pixel in a batch: RGB and the padding byte PIL keeps (dropped on the device).
CHANNELS = 4


def _decoded(jpeg: bytes, resize: Optional[int], crop: int) -> Image.Image:
    """The image with its short side at ``resize`` (None: as stored, but at least ``crop``)."""
    im = Image.open(io.BytesIO(jpeg))
    target = max(resize or 0, crop)
    im.draft("RGB", (target, target))  # JPEG DCT scaling: decode no larger than needed
    im.load()
    if im.mode != "RGB":               # (convert copies even an RGB image)
        im = im.convert("RGB")
    w, h = im.size
    short = min(w, h)
    if (resize and short != resize) or short < crop:
        scale = target / short
        im = im.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.BILINEAR)
    return im


def _crop_box(size: tuple[int, int], crop: int, draw: Optional[Sequence[int]]) -> tuple[int, int]:
    """The crop's corner: from two random draws (training), or the centre (``draw`` None)."""
    w, h = size
    if draw is not None:
        return draw[0] % (w - crop + 1), draw[1] % (h - crop + 1)
    return (w - crop) // 2, (h - crop) // 2


def _pixels(im: Image.Image) -> np.ndarray:
    """(H, W, 4) uint8 view of an RGB image's pixels as PIL holds them (RGB and a padding byte),
    through Arrow's C interface: no copy. Packing them to 3 bytes (``np.asarray``) cost 15% of
    the decode. A large image that PIL keeps in several blocks cannot be viewed so, and is packed."""
    w, h = im.size
    try:
        return pa.array(im).values.to_numpy(zero_copy_only=True).reshape(h, w, CHANNELS)
    except (ValueError, pa.ArrowException):
        packed = np.empty((h, w, CHANNELS), dtype=np.uint8)
        packed[..., :3] = np.asarray(im)
        packed[..., 3] = 255
        return packed


def decode_image(jpeg: bytes, resize: Optional[int], crop: int, train: bool,
                 gen: Optional[torch.Generator], out: Optional[np.ndarray] = None,
                 draw: Optional[Sequence[int]] = None) -> np.ndarray:
    """JPEG -> (crop, crop, 3) uint8: short side resized to ``resize`` (None: as stored, but at
    least ``crop``), then a random crop (train) or the centre crop (eval). With ``out`` (a
    (crop, crop, 4) row of a batch) the crop is written there with PIL's padding byte, the only
    copy made of the pixels. ``draw``: the crop's two random draws, when the caller made them (a
    batch's at once: the same numbers as one image at a time from ``gen``, at a fraction of the cost)."""
    im = _decoded(jpeg, resize, crop)
    if train and draw is None:
        draw = torch.randint(0, 1 << 30, (2,), generator=gen).tolist()
    x, y = _crop_box(im.size, crop, draw if train else None)
    window = _pixels(im)[y:y + crop, x:x + crop]
    if out is None:
        return window[..., :3].copy()
    out[...] = window
    return out


def train_draws(n: int, gen: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch's random draws for ``n`` images, in the order they are made: each crop's two
    numbers (n, 2), then each flip (n,). A resumed run skipping a batch makes them without decoding."""
    crops = torch.randint(0, 1 << 30, (n, 2), generator=gen)
    return crops, torch.rand(n, generator=gen) < 0.5


#: Where the JPEGs are decoded (``data.decode``): in the loader's workers, or by the training
#: device (torchvision's nvJPEG decoder on a GPU) from the bytes the workers ship.
DECODE = ("cpu", "device")


def to_batch(table: pa.Table, *, resize: Optional[int], crop: int, train: bool, seed: int, epoch: int,
             gen: Optional[torch.Generator], take: Optional[np.ndarray] = None,
             decode: str = "cpu") -> dict[str, torch.Tensor]:
    """Rows ``take`` (all when None) of a pyarrow table of shard rows -> the batch dict every model
    consumes: ``image`` (B, H, W, 4) uint8 (RGB and PIL's padding byte, which the model drops on the
    device), and in training ``flip`` (B,) bool, for the device to apply. The JPEG column is read
    row by row, never gathered into a copy of its own.

    ``decode="device"``: no ``image``; the JPEG bytes instead (``jpeg``, ``jpeg_offsets``) and in
    training the crops' draws (``crop_draws``), for :func:`decode_batch` on the training device.
    (``data.decode`` is checked once, when the stream is set up.)"""
    rows = np.arange(table.num_rows) if take is None else np.asarray(take)
    light = table.drop_columns(["image"]).take(pa.array(rows))
    photo_id = light.column("photo_id").to_numpy().copy()  # arrow buffers are read-only
    tags = TagSets.from_arrow(light.column("tag_ids"))
    crops, flip = train_draws(rows.size, gen) if train else (None, None)
    if decode == "device":
        pixels = jpeg_bytes(table.column("image").take(pa.array(rows)))
        if train:
            pixels["crop_draws"] = crops
    else:
        pixels = {"image": decode_rows(table.column("image"), rows, resize, crop, crops)}
    batch = {
        "photo_id": torch.from_numpy(photo_id),
        **pixels,
        "tag": torch.from_numpy(draw_one_tag(photo_id, tags.offsets, tags.values, seed, epoch)),
        "tag_values": torch.from_numpy(tags.values.copy()),
        "tag_offsets": torch.from_numpy(tags.offsets.copy()),
        "latitude": torch.from_numpy(light.column("latitude").to_numpy().copy()),
        "longitude": torch.from_numpy(light.column("longitude").to_numpy().copy()),
    }
    if train:
        batch["flip"] = flip
    return batch


def decode_rows(jpegs: pa.ChunkedArray, rows: np.ndarray, resize: Optional[int], crop: int,
                crops: Optional[torch.Tensor]) -> torch.Tensor:
    """The (B, crop, crop, 4) uint8 pixels of JPEG rows ``rows``, decoded here (the CPU path); in a
    DataLoader worker, in shared memory, so that the pipe sends a handle and not a copy."""
    images = torch.empty((rows.size, crop, crop, CHANNELS), dtype=torch.uint8)
    if get_worker_info() is not None:
        images.share_memory_()
    pixels = images.numpy()
    draws = crops.tolist() if crops is not None else [None] * rows.size
    for i, r in enumerate(rows.tolist()):
        decode_image(jpegs[r].as_py(), resize, crop, crops is not None, None, out=pixels[i], draw=draws[i])
    return images


def jpeg_bytes(jpegs: pa.ChunkedArray) -> dict[str, torch.Tensor]:
    """A batch's JPEGs laid end to end (``jpeg`` uint8) with their bounds (``jpeg_offsets``, B + 1)."""
    column = jpegs.combine_chunks()
    width = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], dtype=width)[column.offset:column.offset + len(column) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return {"jpeg": torch.from_numpy(data.copy()), "jpeg_offsets": torch.from_numpy(offsets - offsets[0])}


def _draft_size(w: int, h: int, target: int) -> tuple[int, int]:
    """The size PIL's ``draft`` decodes a w x h JPEG at for ``target`` (DCT scaling by 1/2, 1/4 or
    1/8 while both sides stay at least ``target``)."""
    scale = min(w // target, h // target)
    a = next(a for a in (8, 4, 2, 1) if scale >= a or a == 1)
    return -(-w // a), -(-h // a)


def fit_decoded(image: torch.Tensor, resize: Optional[int], crop: int) -> torch.Tensor:
    """:func:`_decoded`'s sizing for a decoded (3, H, W) uint8 tensor: the same size, and the same
    pixels where no scaling is needed (the shards' case: stored at the short side that is used).
    Where the CPU path decodes at a reduced DCT scale or resizes, the result is a bilinear,
    antialiased resize: close to PIL's, not equal."""
    target = max(resize or 0, crop)
    h, w = image.shape[-2:]
    dw, dh = _draft_size(w, h, target)
    if (dw, dh) != (w, h):
        image, (w, h) = TF.resize(image, [dh, dw], antialias=True), (dw, dh)
    short = min(w, h)
    if (resize and short != resize) or short < crop:
        scale = target / short
        image = TF.resize(image, [max(crop, round(h * scale)), max(crop, round(w * scale))], antialias=True)
    return image


def decode_batch(jpeg: torch.Tensor, offsets: torch.Tensor, crop: int, resize: Optional[int],
                 crop_draws: Optional[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """The JPEGs of a ``decode="device"`` batch decoded on ``device`` (nvJPEG on a GPU, batched),
    sized and cropped as the CPU path does (random crops from ``crop_draws``, else the centre):
    (B, crop, crop, 3) uint8 on ``device``. On the CPU it gives the CPU path's pixels (tested)."""
    bounds = offsets.tolist()
    data = [jpeg[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device) if data else []
    out = torch.empty((len(data), crop, crop, 3), dtype=torch.uint8, device=device)
    draws = crop_draws.tolist() if crop_draws is not None else [None] * len(data)
    for i, image in enumerate(decoded):
        image = fit_decoded(image, resize, crop)
        x, y = _crop_box((image.shape[-1], image.shape[-2]), crop, draws[i])
        out[i] = image[:, y:y + crop, x:x + crop].permute(1, 2, 0)
    return out
