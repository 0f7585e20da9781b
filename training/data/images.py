"""JPEG bytes from the shards to the uint8 batch tensors every image model consumes.

Workers do only what must happen on the CPU: decode, crop, and write the pixels once into the
batch's (B, H, W, 3) uint8 array. Of a JPEG used at its stored size (the shards' case: written at
the short side training reads) only the crop is decoded, by libjpeg-turbo's TurboJPEG API
(:mod:`training.data.turbojpeg`), where that library is found; else the whole image is decoded by
torchvision's ``decode_jpeg``, whose RGB output is already (H, W, 3) memory, and the crop copied
out. Both give PIL's pixels (all three are libjpeg-turbo), faster and at a steadier speed than
PIL's decode, which runs at two speeds on the same bytes (docs/gpu.md). Anything else (a JPEG
decoded smaller by DCT scaling or resized, another colour space, another format, a broken file)
goes through PIL as before. In a DataLoader worker the batch is made in shared memory (a block
the worker reuses, :mod:`training.data.shared`), so that it reaches the main process without
another copy. The flip is drawn here (so that it is reproducible per worker) but applied on the device, with
normalisation and the channels_last layout (:meth:`training.models.base.TagModel.features`):
uint8 NHWC is a quarter of float32's bytes through the worker pipe and the host-to-device copy,
and no copy of the batch is made on the CPU after decoding.

Tags travel as CSR (``tag_values``, ``tag_offsets``) so that multi-hot or word-vector targets are
built on the device. MCC's target, one tag drawn per load, is a hash of (photo_id, seed, epoch):
the same whatever the number of ranks and workers.
"""
from __future__ import annotations

import io
import struct
import warnings
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from common.metrics import TagSets
from training.data import shared, turbojpeg
from training.data.plan import draw_one_tag

# The JPEGs are views of Arrow's read-only buffers, which the decoder only reads.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

#: Bytes a pixel in a batch: RGB.
CHANNELS = 3

#: Frame (SOF) markers of the JPEGs decoded by torchvision: baseline, extended and progressive
#: Huffman coding. The rarer kinds (lossless, arithmetic) go through PIL.
_TORCHVISION_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
#: Markers that stand alone, without a length: TEM, RST0-7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def jpeg_frame(data: bytes | memoryview) -> Optional[tuple[int, int, int, int]]:
    """(width, height, components, SOF marker) of a JPEG, read from its frame header by stepping
    over the marker segments before it (a few, each read by its length); None when ``data`` is
    not a JPEG or its header is malformed. Cheaper than opening the image with PIL."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                     # a fill byte before the marker
            i += 1
        elif marker in _STANDALONE:
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > n:
                return None
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height, data[i + 9], marker
        elif marker in (0xD9, 0xDA):           # image end, or scan data before any frame
            return None
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def _resized_size(w: int, h: int, resize: Optional[int], crop: int) -> Optional[tuple[int, int]]:
    """The (w, h) a decoded w x h image is resized to, so that its short side is ``resize`` (None:
    as it is, but at least ``crop``); None when it keeps its size. One rule for PIL's path, the
    device's and the choice between them."""
    short = min(w, h)
    if not ((resize and short != resize) or short < crop):
        return None
    scale = max(resize or 0, crop) / short
    return max(crop, round(w * scale)), max(crop, round(h * scale))


def _as_stored(width: int, height: int, resize: Optional[int], crop: int) -> bool:
    """Whether :func:`_decoded` would keep the image at its stored size: no DCT scaling, no resize."""
    return (_draft_size(width, height, max(resize or 0, crop)) == (width, height)
            and _resized_size(width, height, resize, crop) is None)


def _stored_size(jpeg: bytes | memoryview, resize: Optional[int], crop: int) -> Optional[tuple[int, int]]:
    """(width, height) of a JPEG that is used at its stored size and is of the common kind (grey or
    three components, Huffman-coded); None for the rest, which :func:`_decoded` (PIL) decodes."""
    frame = jpeg_frame(jpeg)
    if (frame is None or frame[2] not in (1, 3) or frame[3] not in _TORCHVISION_FRAMES
            or not _as_stored(frame[0], frame[1], resize, crop)):
        return None
    return frame[0], frame[1]


def _stored_crop(jpeg: bytes | memoryview, resize: Optional[int], crop: int, draw: Optional[Sequence[int]],
                 out: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The crop of a JPEG used at its stored size, decoded alone by libjpeg-turbo
    (:mod:`training.data.turbojpeg`) into ``out`` (or a new array): the whole decode's pixels in about
    4/5 of its time. None where the whole image is decoded instead: no TurboJPEG 3 library, a JPEG
    it does not take, or one that does not end as a JPEG ends (a truncated file must fail as a
    whole decode fails, wherever its crop lies)."""
    turbo = turbojpeg.decoder()
    size = _stored_size(jpeg, resize, crop) if turbo is not None and bytes(jpeg[-2:]) == b"\xff\xd9" else None
    if size is None:
        return None
    x, y = _crop_box(size, crop, draw)
    target = out if out is not None else np.empty((crop, crop, CHANNELS), np.uint8)
    return target if turbo.crop(jpeg, x, y, crop, target) else None


def _stored_pixels(jpeg: bytes | memoryview, resize: Optional[int], crop: int) -> Optional[np.ndarray]:
    """(H, W, 3) RGB pixels of a JPEG used at its stored size, decoded by torchvision (no copy after
    the decode: its (3, H, W) output is a view of (H, W, 3) memory); None where :func:`_decoded`
    (PIL) must decide: another size, colour space or coding, or bytes torchvision cannot decode
    (PIL then gives the same image, or its own error)."""
    frame = _stored_size(jpeg, resize, crop)
    if frame is None:
        return None
    try:
        image = decode_jpeg(torch.frombuffer(jpeg, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    if tuple(image.shape[1:]) != (frame[1], frame[0]):
        return None
    return image.numpy().transpose(1, 2, 0)


def _decoded(jpeg: bytes | memoryview, resize: Optional[int], crop: int) -> Image.Image:
    """The image with its short side at ``resize`` (None: as stored, but at least ``crop``)."""
    im = Image.open(io.BytesIO(jpeg))
    target = max(resize or 0, crop)
    im.draft("RGB", (target, target))  # JPEG DCT scaling: decode no larger than needed
    im.load()
    if im.mode != "RGB":               # (convert copies even an RGB image)
        im = im.convert("RGB")
    size = _resized_size(*im.size, resize, crop)
    return im.resize(size, Image.BILINEAR) if size else im


def _crop_box(size: tuple[int, int], crop: int, draw: Optional[Sequence[int]]) -> tuple[int, int]:
    """The crop's corner: from two random draws (training), or the centre (``draw`` None)."""
    w, h = size
    if draw is not None:
        return draw[0] % (w - crop + 1), draw[1] % (h - crop + 1)
    return (w - crop) // 2, (h - crop) // 2


def _pixels(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 view of an RGB image's pixels as PIL holds them (RGB and a padding byte),
    through Arrow's C interface: no copy; only the crop is copied out of it. (Packing the whole
    image to 3 bytes, ``np.asarray``, cost 15% of the decode.) A large image that PIL keeps in
    several blocks cannot be viewed so, and is packed."""
    w, h = im.size
    try:
        return pa.array(im).values.to_numpy(zero_copy_only=True).reshape(h, w, 4)[..., :3]
    except (ValueError, pa.ArrowException):
        return np.asarray(im)


def decode_image(jpeg: bytes | memoryview, resize: Optional[int], crop: int, train: bool,
                 gen: Optional[torch.Generator], out: Optional[np.ndarray] = None,
                 draw: Optional[Sequence[int]] = None) -> np.ndarray:
    """JPEG -> (crop, crop, 3) uint8: short side resized to ``resize`` (None: as stored, but at
    least ``crop``), then a random crop (train) or the centre crop (eval). With ``out`` (a
    (crop, crop, 3) row of a batch) the crop is written there, the only copy made of the pixels.
    ``draw``: the crop's two random draws, when the caller made them (a batch's at once: the same
    numbers as one image at a time from ``gen``, at a fraction of the cost)."""
    if train and draw is None:
        draw = torch.randint(0, 1 << 30, (2,), generator=gen).tolist()
    draw = draw if train else None
    window = _stored_crop(jpeg, resize, crop, draw, out)
    if window is not None:
        return window
    pixels = _stored_pixels(jpeg, resize, crop)
    if pixels is None:
        pixels = _pixels(_decoded(jpeg, resize, crop))
    h, w = pixels.shape[:2]
    x, y = _crop_box((w, h), crop, draw)
    window = pixels[y:y + crop, x:x + crop]
    if out is None:
        return window.copy()
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
    consumes: ``image`` (B, H, W, 3) uint8 RGB, and in training ``flip`` (B,) bool, for the device
    to apply. The JPEG column is read row by row, as views of its buffers, never copied.

    ``decode="device"``: no ``image``; the JPEG bytes instead (``jpeg``, ``jpeg_offsets``) and in
    training the crops' draws (``crop_draws``), for :func:`decode_batch` on the training device.
    (``data.decode`` is checked once, when the stream is set up.)"""
    rows = np.arange(table.num_rows) if take is None else np.asarray(take)
    light = table.drop_columns(["image"]).take(pa.array(rows))
    photo_id = light.column("photo_id").to_numpy()
    tags = TagSets.from_arrow(light.column("tag_ids"))
    crops, flip = train_draws(rows.size, gen) if train else (None, None)
    arrays = {"photo_id": photo_id, "tag": draw_one_tag(photo_id, tags.offsets, tags.values, seed, epoch),
              "tag_values": tags.values, "tag_offsets": tags.offsets,
              "latitude": light.column("latitude").to_numpy(), "longitude": light.column("longitude").to_numpy()}
    if train:
        arrays["flip"] = flip.numpy()
    if decode == "device":
        arrays.update(jpeg_bytes(table.column("image").take(pa.array(rows))))
        if train:
            arrays["crop_draws"] = crops.numpy()
        return batch_tensors(arrays)
    batch = batch_tensors(arrays, image=(rows.size, crop, crop, CHANNELS))
    decode_rows(table.column("image"), rows, resize, crop, crops, out=batch["image"].numpy())
    return batch


def decode_rows(jpegs: pa.ChunkedArray, rows: np.ndarray, resize: Optional[int], crop: int,
                crops: Optional[torch.Tensor], out: np.ndarray) -> None:
    """JPEG rows ``rows`` decoded here (the CPU path) into ``out``, their (B, crop, crop, 3) uint8
    pixels: random crops from ``crops`` (training), else the centre."""
    draws = crops.tolist() if crops is not None else [None] * rows.size
    for i, jpeg in enumerate(jpeg_views(jpegs, rows)):
        decode_image(jpeg, resize, crop, crops is not None, None, out=out[i], draw=draws[i])


def batch_tensors(arrays: dict[str, np.ndarray],
                  image: Optional[tuple[int, ...]] = None) -> dict[str, torch.Tensor]:
    """A batch's arrays as tensors of their own (Arrow's buffers are read-only), with room for its
    pixels (``image``: uint8 of that shape, left unset). In a DataLoader worker they are all views of
    one block of shared memory, made there from the start: the worker sends each storage as a file
    descriptor of its own and the training process maps each, so a block a batch is one of each
    rather than nine (and ``share_memory_`` would copy the pixels once more). The block is one the
    worker has written before where the training process has let go of it
    (:mod:`training.data.shared`): pages already mapped, not new ones to fault in."""
    if get_worker_info() is None:
        batch = {"image": torch.empty(image, dtype=torch.uint8)} if image else {}
        return {**batch, **{k: torch.from_numpy(np.array(a)) for k, a in arrays.items()}}
    arrays = {k: np.ascontiguousarray(a) for k, a in arrays.items()}
    sizes = [int(np.prod(image)) if image else 0] + [a.nbytes for a in arrays.values()]
    starts = np.concatenate([[0], np.cumsum([-(-n // 8) * 8 for n in sizes])])   # 8-byte aligned
    storage, release = shared.worker_pool().take(int(starts[-1]))
    pixels = {"image": torch.empty(0, dtype=torch.uint8).set_(storage, 0, image)} if image else {}
    batch = shared.SharedBatch(pixels)
    batch.release = release
    for (name, a), at in zip(arrays.items(), starts[1:-1].tolist()):
        dtype = torch.from_numpy(np.empty(0, a.dtype)).dtype       # (a itself may be read-only)
        view = torch.empty(0, dtype=dtype).set_(storage, at // a.itemsize, a.shape)
        view.numpy()[...] = a
        batch[name] = view
    return batch


def _binary_buffers(chunk: pa.Array) -> tuple[np.ndarray, memoryview]:
    """A binary array's value offsets (int64, len + 1) and its data buffer, as they are in memory."""
    width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], dtype=width)[chunk.offset:chunk.offset + len(chunk) + 1]
    data = chunk.buffers()[2]
    return offsets.astype(np.int64), memoryview(data if data is not None else b"").cast("B")


def jpeg_views(jpegs: pa.ChunkedArray, rows: np.ndarray) -> list[memoryview]:
    """Rows ``rows`` of a binary column as views of its buffers: no copy (``as_py`` makes one a row)."""
    starts = np.cumsum([0] + [len(c) for c in jpegs.chunks])
    chunk_of = np.searchsorted(starts, rows, side="right") - 1
    buffers: dict[int, tuple[np.ndarray, memoryview]] = {}
    views = []
    for r, k in zip(rows.tolist(), chunk_of.tolist()):
        if k not in buffers:
            buffers[k] = _binary_buffers(jpegs.chunk(k))
        offsets, data = buffers[k]
        i = r - int(starts[k])
        views.append(data[offsets[i]:offsets[i + 1]])
    return views


def jpeg_bytes(jpegs: pa.ChunkedArray) -> dict[str, np.ndarray]:
    """A batch's JPEGs laid end to end (``jpeg`` uint8) with their bounds (``jpeg_offsets``, B + 1)."""
    offsets, data = _binary_buffers(jpegs.combine_chunks())
    jpeg = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
    return {"jpeg": jpeg, "jpeg_offsets": offsets - offsets[0]}


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
    size = _resized_size(w, h, resize, crop)
    return TF.resize(image, [size[1], size[0]], antialias=True) if size else image


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
