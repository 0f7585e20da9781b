"""The workers' JPEG decode: where a JPEG is used at its stored size, its crop decoded alone
(libjpeg-turbo's TurboJPEG API) or the whole image by torchvision's decoder; PIL for everything
else; the same pixels every way (and PIL's errors for broken files)."""
from __future__ import annotations

import io
import platform
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers.images import jpeg
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from training.data import images as I
from training.data import turbojpeg as T


def _reload_library() -> None:
    T.decoder.cache_clear()


@pytest.fixture(params=["crops", "whole"])
def decoders(request, monkeypatch):
    """Each test twice: with the crop decoder (``[train]`` installs it on x86-64 Linux, so there a
    missing one is a failure) and with it off (``LOCSENS_TURBOJPEG=off``: whole decodes)."""
    if request.param == "whole":
        monkeypatch.setenv(T.ENV, "off")
    else:
        monkeypatch.delenv(T.ENV, raising=False)
    _reload_library()
    if request.param == "crops":
        _crop_decoder()
    yield request.param
    _reload_library()


def _crop_decoder() -> T.CropDecoder:
    decoder = T.decoder()
    if decoder is None:
        if sys.platform == "linux" and platform.machine() == "x86_64":
            pytest.fail("no TurboJPEG 3 library: the turbojpeg wheel of [train] is not installed")
        pytest.skip("no TurboJPEG 3 library on this platform")
    return decoder


def _pil_crop(data: bytes, resize, crop: int, draw=None) -> np.ndarray:
    """The crop as PIL alone makes it: decoded (DCT scaling, resize) by ``_decoded``, packed, cropped."""
    im = I._decoded(data, resize, crop)
    x, y = I._crop_box(im.size, crop, draw)
    return np.asarray(im)[y:y + crop, x:x + crop]


def _encode(im: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", **kw)
    return out.getvalue()


def _kinds() -> dict[str, bytes]:
    """JPEGs as the shards and uploads hold them: baseline 4:2:0, 4:4:4, progressive, greyscale, odd sizes."""
    base = Image.open(io.BytesIO(jpeg(61, 47, seed=3)))
    return {"baseline": jpeg(61, 47, seed=3), "444": _encode(base, quality=95, subsampling=0),
            "progressive": _encode(base, quality=90, progressive=True), "grey": _encode(base.convert("L")),
            "exif": _encode(base, exif=Image.Exif()), "tall": jpeg(33, 80, seed=4)}


@pytest.mark.parametrize("kind", sorted(_kinds()))
def test_a_jpeg_at_its_stored_size_is_decoded_into_pils_pixels(kind, decoders):
    data = _kinds()[kind]
    w, h = Image.open(io.BytesIO(data)).size
    assert I.jpeg_frame(data)[:2] == (w, h)
    assert I.jpeg_frame(memoryview(data))[:2] == (w, h)
    crop = min(w, h) - 3
    assert I._stored_pixels(data, None, crop) is not None            # torchvision's, if not the crop's
    assert (I._stored_crop(data, None, crop, None, None) is not None) == (decoders == "crops")
    for train, draw in ((False, None), (True, (5, 9)), (True, (1 << 29, 7))):
        got = I.decode_image(data, None, crop, train, None, draw=draw)
        assert got.shape == (crop, crop, 3) and got.flags["C_CONTIGUOUS"]
        assert np.array_equal(got, _pil_crop(data, None, crop, draw if train else None))
    out = np.zeros((crop, crop, 3), np.uint8)                        # written into a batch's row
    I.decode_image(data, min(w, h), crop, False, None, out=out)
    assert np.array_equal(out, _pil_crop(data, min(w, h), crop))


def test_what_torchvision_would_decode_otherwise_goes_through_pil(decoders):
    big = jpeg(200, 120, seed=5)
    cmyk = _encode(Image.open(io.BytesIO(big)).convert("CMYK"))
    cases = {"dct-scaled": (big, None, 50), "resized": (big, 100, 64), "short below the crop": (big, None, 150),
             "cmyk": (cmyk, None, 100)}
    for name, (data, resize, crop) in cases.items():
        assert I._stored_pixels(data, resize, crop) is None, name
        assert I._stored_crop(data, resize, crop, None, None) is None, name
        assert np.array_equal(I.decode_image(data, resize, crop, False, None), _pil_crop(data, resize, crop)), name
    png = io.BytesIO()
    Image.open(io.BytesIO(big)).save(png, format="PNG")
    assert I.jpeg_frame(png.getvalue()) is None
    assert np.array_equal(I.decode_image(png.getvalue(), None, 100, False, None), _pil_crop(png.getvalue(), None, 100))


def test_a_broken_jpeg_fails_as_pil_fails(decoders):
    """The faster decoders' errors are not the caller's to know: PIL decides, and raises its own,
    wherever the crop lies (a crop decoded alone never reads a truncated file's missing end)."""
    data, crop = jpeg(64, 64, seed=6), 40                             # (a crop that is not DCT-scaled)
    assert I._stored_size(data, None, crop) == (64, 64)
    assert I.jpeg_frame(data[:40]) is None or I._stored_pixels(data[:40], None, crop) is None
    for broken in (data[: len(data) // 2], data[:-2], data[:-200], b"\xff\xd8\xff\xe0\x00"):
        for train, draw in ((False, None), (True, (0, 0)), (True, (24, 24))):
            with pytest.raises(OSError):
                I.decode_image(broken, None, crop, train, None, draw=draw)
    assert I.jpeg_frame(b"") is None and I.jpeg_frame(b"\xff\xd8") is None


@pytest.mark.parametrize("kind", ["420", "422", "444", "progressive", "grey"])
def test_a_crop_decoded_alone_has_the_whole_decodes_pixels_wherever_it_lies(kind):
    """Every left edge (on and off the iMCU grid, at both image edges) and a few rows: the crop
    libjpeg-turbo decodes alone equals the same window of PIL's whole decode."""
    base = Image.open(io.BytesIO(jpeg(150, 131, seed=8)))
    options = {"420": {"quality": 90}, "422": {"subsampling": 1}, "444": {"subsampling": 0},
               "progressive": {"progressive": True}, "grey": {}}
    data = _encode(base.convert("L") if kind == "grey" else base, **options[kind])
    whole = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    size, decoder = 100, _crop_decoder()
    out = np.empty((size, size, 3), np.uint8)
    for x in range(whole.shape[1] - size + 1):
        for y in {0, 13, x % 32, whole.shape[0] - size}:
            out[...] = 0
            assert decoder.crop(data, x, y, size, out), (x, y)
            assert np.array_equal(out, whole[y:y + size, x:x + size]), (kind, x, y)
    assert not decoder.crop(data, 51, 0, size, out)                     # past the right edge
    cmyk = _encode(base.convert("CMYK"))
    assert not decoder.crop(cmyk, 0, 0, size, out)                      # YCCK/CMYK: whole decodes


def test_a_library_named_by_the_environment_must_be_one(monkeypatch, tmp_path):
    bogus = tmp_path / "libturbojpeg.so"
    bogus.write_bytes(b"not a library")
    monkeypatch.setenv(T.ENV, str(bogus))
    _reload_library()
    try:
        with pytest.raises(RuntimeError, match=f"{T.ENV}=.*libturbojpeg.so.*TurboJPEG 3"):
            T.decoder()
    finally:
        monkeypatch.delenv(T.ENV)
        _reload_library()


def test_the_wheels_library_is_told_from_its_extension_module():
    assert T._is_library("libturbojpeg-dd00d054.so.0.3.0") and T._is_library("libturbojpeg.0.dylib")
    assert T._is_library("turbojpeg-4f2a.dll") and T._is_library("turbojpeg.dll")
    assert not T._is_library("turbojpeg.cpython-311-x86_64-linux-gnu.so")
    assert not T._is_library("turbojpeg.cp311-win_amd64.pyd") and not T._is_library("RECORD")


def test_jpeg_views_read_rows_across_chunks_without_copies():
    column = pa.chunked_array([pa.array([b"ab", b"", b"xyz"]), pa.array([b"q", None, b"\xff\xd8"], pa.large_binary())
                               .cast(pa.binary())])
    views = I.jpeg_views(column, np.array([4, 0, 2, 5, 1, 3]))
    assert [bytes(v) for v in views] == [b"", b"ab", b"xyz", b"\xff\xd8", b"", b"q"]
    assert views[3][0] == 0xFF                                       # bytes, not signed chars
    packed = I.jpeg_bytes(column.slice(1, 4))
    assert bytes(packed["jpeg"]) == b"xyzq" and packed["jpeg_offsets"].tolist() == [0, 0, 3, 4, 4]


class _Rows(IterableDataset):
    """A batch made by ``to_batch`` (where a worker makes it), and what it was made in."""

    def __init__(self, data: list[bytes], decode: str):
        self.data, self.decode = data, decode

    def __iter__(self):
        n = len(self.data)
        table = pa.table({"photo_id": pa.array(range(100, 100 + n), pa.int64()), "image": pa.array(self.data),
                          "tag_ids": pa.array([[i % 3, 7] for i in range(n)], pa.list_(pa.int32())),
                          "latitude": pa.array(np.linspace(-10, 10, n)), "longitude": pa.array(np.linspace(5, 6, n))})
        batch = I.to_batch(table, resize=None, crop=40, train=True, seed=1, epoch=0,
                           gen=torch.Generator().manual_seed(2), decode=self.decode)
        storages = {t.untyped_storage().data_ptr() for t in batch.values()}
        yield {**batch, "shared": torch.tensor(all(t.is_shared() for t in batch.values())),
               "storages": torch.tensor(len(storages))}


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_a_workers_batch_is_one_block_of_shared_memory_and_arrives_whole(decode):
    """In a worker every tensor of a batch is a view of one shared block (one file descriptor to send,
    one mapping to make); out of one, tensors of their own. The same values either way."""
    data = [jpeg(48, 44, seed=s) for s in range(5)]
    (sent,) = list(DataLoader(_Rows(data, decode), batch_size=None, num_workers=1))
    (local,) = list(_Rows(data, decode))
    assert bool(sent["shared"]) and int(sent["storages"]) == 1
    assert not bool(local["shared"]) and int(local["storages"]) == len(local) - 2
    assert sent.keys() == local.keys()
    for name in sent.keys() - {"shared", "storages"}:
        assert sent[name].dtype == local[name].dtype and torch.equal(sent[name], local[name]), name
    if decode == "cpu":
        draws = I.train_draws(5, torch.Generator().manual_seed(2))[0].tolist()
        want = np.stack([_pil_crop(d, None, 40, draw) for d, draw in zip(data, draws)])
        assert np.array_equal(sent["image"].numpy(), want)
    else:
        assert bytes(sent["jpeg"].numpy()) == b"".join(data)
