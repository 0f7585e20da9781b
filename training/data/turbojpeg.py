"""A JPEG's crop decoded alone, by libjpeg-turbo's TurboJPEG 3 API (partial decompression).

A 224 px training crop of a 300 px shard image holds 56% of its pixels. Decoding the whole image
and copying the crop out spends the inverse DCT, upsampling and colour conversion on pixels that
are thrown away. libjpeg-turbo can skip the rows above and below a region and the iMCU columns
outside it (``tj3SetCroppingRegion``): about 4/5 of a whole decode's time here (docs/gpu.md).
The pixels are a whole decode's, bit for bit, provided the region has one more pixel than the crop
on every side that is not the image's edge: fancy upsampling reads the chroma next to a pixel, and
at a region's edge it repeats the last one instead. So the region is the crop widened by that
pixel, its left edge moved back to an iMCU boundary (the API's rule); it is decoded into a scratch
buffer of this thread's and the crop copied out of it (tested against PIL and torchvision).

The library is found, in order: ``LOCSENS_TURBOJPEG`` (a path to a libturbojpeg of 3.0 or later;
``off``: none), the copy the ``turbojpeg`` wheel carries (a dependency of ``[train]`` on x86-64
Linux), the system's ``libturbojpeg`` if it has the 3.x API. With none, :func:`decoder` is None
and images are decoded whole: the same pixels, more slowly.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import threading
from functools import lru_cache
from typing import Optional

import numpy as np

ENV = "LOCSENS_TURBOJPEG"

# TurboJPEG 3's constants (turbojpeg.h).
_INIT_DECOMPRESS = 1
_PARAM_SUBSAMP, _PARAM_JPEGWIDTH, _PARAM_JPEGHEIGHT, _PARAM_COLORSPACE = 4, 5, 6, 8
_PF_RGB = 0
_CS_YCBCR, _CS_GRAY = 1, 2
#: iMCU width in pixels per chroma subsampling (TJSAMP_444, 422, 420, GRAY, 440, 411, 441).
_MCU_WIDTH = (8, 16, 16, 8, 8, 32, 8)


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declares the few functions used; AttributeError when ``lib`` lacks the 3.x API."""
    handle, size, buf = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p
    lib.tj3Init.restype, lib.tj3Init.argtypes = handle, [ctypes.c_int]
    lib.tj3Destroy.restype, lib.tj3Destroy.argtypes = None, [handle]
    lib.tj3DecompressHeader.argtypes = [handle, buf, size]
    lib.tj3Get.argtypes = [handle, ctypes.c_int]
    lib.tj3SetCroppingRegion.argtypes = [handle, _Region]
    lib.tj3Decompress8.argtypes = [handle, buf, size, buf, ctypes.c_int, ctypes.c_int]
    return lib


def _is_library(name: str) -> bool:
    """Whether a file the ``turbojpeg`` wheel installs is its copy of libturbojpeg (auditwheel,
    delocate and delvewheel rename it, keeping the stem): not the wheel's own extension module."""
    return (name.startswith(("libturbojpeg", "turbojpeg-", "turbojpeg.dll"))
            and (".so" in name or name.endswith((".dylib", ".dll"))))


def _candidates(named: Optional[str]) -> list[str]:
    """Paths or names of libturbojpeg to try, in order, ``named`` (``LOCSENS_TURBOJPEG``) first."""
    if named == "off":
        return []
    found = [named] if named else []
    try:
        dist = importlib.metadata.distribution("turbojpeg")
        found += [str(dist.locate_file(f)) for f in dist.files or () if _is_library(f.name)]
    except importlib.metadata.PackageNotFoundError:
        pass
    system = ctypes.util.find_library("turbojpeg")
    return found + ([system] if system else [])


def _library() -> Optional[ctypes.CDLL]:
    named = os.environ.get(ENV)
    for path in _candidates(named):
        try:
            return _bind(ctypes.CDLL(path))
        except (OSError, AttributeError):
            if path == named:
                raise RuntimeError(f"{ENV}={path}: not a libturbojpeg with the TurboJPEG 3 API "
                                   "(libjpeg-turbo 3.0 or later)") from None
    return None


class _Thread:
    """A thread's TurboJPEG handle (a handle is not thread-safe) and scratch buffer; the handle is
    freed with it, when the thread's locals go."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib, self.handle = lib, lib.tj3Init(_INIT_DECOMPRESS)
        if not self.handle:
            raise MemoryError("libturbojpeg: tj3Init failed")
        self.scratch = np.empty(0, np.uint8)

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.tj3Destroy(self.handle)


class CropDecoder:
    """Decodes a JPEG's crop into a caller's (size, size, 3) uint8 array (one per process, used from
    any thread)."""

    def __init__(self, lib: ctypes.CDLL):
        self._lib, self._local = lib, threading.local()

    def crop(self, jpeg: bytes | memoryview, x: int, y: int, size: int, out: np.ndarray) -> bool:
        """Writes the ``size`` px square at (x, y) of the JPEG's RGB pixels into ``out``; False (and
        ``out`` unspecified) when this decoder does not take the JPEG (a colour space other than
        YCbCr or grey, an unusual subsampling, a region outside it) or libjpeg-turbo reports an
        error or a warning (corrupt data): the caller then decodes it whole, which decides."""
        thread = getattr(self._local, "thread", None)
        if thread is None:
            thread = self._local.thread = _Thread(self._lib)
        lib, handle = self._lib, thread.handle
        data = np.frombuffer(jpeg, dtype=np.uint8)
        address, n = data.ctypes.data, data.size
        if lib.tj3DecompressHeader(handle, address, n) != 0:
            return False
        width, height = lib.tj3Get(handle, _PARAM_JPEGWIDTH), lib.tj3Get(handle, _PARAM_JPEGHEIGHT)
        subsamp = lib.tj3Get(handle, _PARAM_SUBSAMP)
        inside = 0 <= x and 0 <= y and x + size <= width and y + size <= height
        if (lib.tj3Get(handle, _PARAM_COLORSPACE) not in (_CS_YCBCR, _CS_GRAY)
                or not 0 <= subsamp < len(_MCU_WIDTH) or not inside):
            return False
        mcu = _MCU_WIDTH[subsamp]
        left = max(x - 1, 0) // mcu * mcu          # a pixel of context, back to an iMCU boundary
        w = min(x + size + 1, width) - left        # and one on the right (rows keep theirs)
        need = w * size * 3
        if thread.scratch.size < need:
            thread.scratch = np.empty(need, np.uint8)
        if (lib.tj3SetCroppingRegion(handle, _Region(left, y, w, size)) != 0
                or lib.tj3Decompress8(handle, address, n, thread.scratch.ctypes.data, w * 3, _PF_RGB) != 0):
            return False
        out[...] = thread.scratch[:need].reshape(size, w, 3)[:, x - left:x - left + size]
        return True


@lru_cache(maxsize=1)
def decoder() -> Optional[CropDecoder]:
    """The process's crop decoder, or None without a TurboJPEG 3 library (looked for once;
    ``decoder.cache_clear()`` looks again, after ``LOCSENS_TURBOJPEG`` has changed)."""
    lib = _library()
    return CropDecoder(lib) if lib is not None else None
