"""MD5 over many short byte strings at once, in numpy.

The synthetic world needs ``photo_hash`` (MD5 of the download URL) for millions of rows; a
``hashlib`` call per row is a Python loop per row. Download URLs are short, so every message fits
in a few 64-byte blocks and the 64 MD5 steps run as vector operations over all rows together.
"""
from __future__ import annotations

import numpy as np

_S = np.array([7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4,
              dtype=np.uint32)
_K = (np.floor(np.abs(np.sin(np.arange(1, 65, dtype=np.float64))) * 2**32)).astype(np.uint32)
_INIT = np.array([0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476], dtype=np.uint32)


def _rotl(x: np.ndarray, s: int) -> np.ndarray:
    return (x << np.uint32(s)) | (x >> np.uint32(32 - s))


def md5_many(messages: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """MD5 digests of ``messages`` (uint8, shape (n, max_len), zero-padded) of byte ``lengths``.

    Returns uint8 digests of shape (n, 16), identical to ``hashlib.md5(m).digest()``.
    """
    messages = np.asarray(messages, dtype=np.uint8)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = messages.shape[0]
    blocks = (lengths + 8) // 64 + 1                      # message + 0x80 + 64-bit length
    nblocks = int(blocks.max()) if n else 1
    buf = np.zeros((n, nblocks * 64), dtype=np.uint8)
    width = min(messages.shape[1], nblocks * 64)
    cols = np.arange(width)
    buf[:, :width] = np.where(cols[None, :] < lengths[:, None], messages[:, :width], 0)
    rows = np.arange(n)
    buf[rows, lengths] = 0x80
    bit_len = (lengths * 8).astype(np.uint64)
    end = blocks * 64
    for i in range(8):                                    # little-endian length in the last 8 bytes
        buf[rows, end - 8 + i] = ((bit_len >> np.uint64(8 * i)) & np.uint64(0xFF)).astype(np.uint8)
    words = buf.view("<u4").reshape(n, nblocks, 16).astype(np.uint32)

    state = np.tile(_INIT, (n, 1))
    for b in range(nblocks):
        active = blocks > b
        m = words[:, b, :]
        a, bb, c, d = (state[:, i].copy() for i in range(4))
        for i in range(64):
            if i < 16:
                f, g = (bb & c) | (~bb & d), i
            elif i < 32:
                f, g = (d & bb) | (~d & c), (5 * i + 1) % 16
            elif i < 48:
                f, g = bb ^ c ^ d, (3 * i + 5) % 16
            else:
                f, g = c ^ (bb | ~d), (7 * i) % 16
            f = f + a + _K[i] + m[:, g]
            a, d, c = d, c, bb
            bb = bb + _rotl(f, int(_S[i]))
        new = state + np.stack([a, bb, c, d], axis=1)
        state = np.where(active[:, None], new, state)
    return state.astype("<u4").view(np.uint8).reshape(n, 16)


def encode_ascii(strings: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack ASCII strings into a zero-padded uint8 matrix and their lengths (vectorised)."""
    arr = np.asarray(strings, dtype="S")
    width = max(arr.dtype.itemsize, 1)
    mat = np.frombuffer(arr.tobytes(), dtype=np.uint8).reshape(len(arr), width)
    return mat, np.char.str_len(arr).astype(np.int64)
