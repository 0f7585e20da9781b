"""Image bytes for the shards: read from a multimedia-commons tree, decode, resize, re-encode.

PIL work cannot be a Spark column function, so it runs inside the shard writer (``mapInArrow``),
and image bytes never go through a Spark shuffle. Reading goes through ``pyarrow.fs`` (local
paths, file://, hdfs://, s3://, gs://) with the URIs the driver qualified, so executors read only
the images they need instead of Spark listing the 100M-file mirror. Failures are values
(:class:`ImageError` with a reason), not exceptions, so a thread pool can map over a window of rows.
"""
from __future__ import annotations

import bisect
import collections
import functools
import io
import math
import os
import urllib.parse
from concurrent.futures import Executor
from typing import Mapping, Optional, Sequence

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

#: Why an image did not make it into a shard.
IMAGE_REASONS: tuple[str, ...] = ("missing_image", "undecodable_image", "download_failed")
_URI_ALIASES = {"s3a://": "s3://", "s3n://": "s3://"}

#: Hadoop's s3a settings the executors' pyarrow needs to reach the same store as the driver's
#: Hadoop (the job reads them from its Hadoop configuration, i.e. ``spark.hadoop.fs.s3a.*``):
#: without them an ``s3a://`` path on MinIO or any other endpoint would be looked for on AWS.
S3A_SETTINGS = {"fs.s3a.endpoint": "endpoint", "fs.s3a.endpoint.region": "region",
                "fs.s3a.path.style.access": "path_style", "fs.s3a.connection.ssl.enabled": "ssl",
                "fs.s3a.access.key": "access_key", "fs.s3a.secret.key": "secret_key",
                "fs.s3a.session.token": "session_token"}

#: ``(option, value)`` pairs of :data:`S3A_SETTINGS` (hashable, for the per-process cache).
S3Options = tuple[tuple[str, str], ...]


def s3_options(hadoop: Mapping[str, Optional[str]]) -> S3Options:
    """The s3a settings given in ``hadoop`` (a Hadoop configuration's values by key)."""
    return tuple(sorted((ours, str(hadoop[key])) for key, ours in S3A_SETTINGS.items() if hadoop.get(key)))


def s3_filesystem(options: S3Options) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem as Hadoop's s3a would reach the store: endpoint (with its scheme, or
    https unless ssl is off), path-style or virtual-host addressing, region and credentials (when
    none are given, pyarrow's own chain: AWS_* variables, profiles, instance roles)."""
    o = dict(options)
    kwargs: dict[str, object] = {k: o[k] for k in ("access_key", "secret_key", "session_token", "region") if k in o}
    if "endpoint" in o:
        scheme = "http" if o.get("ssl", "true").lower() == "false" else "https"
        endpoint = urllib.parse.urlparse(o["endpoint"] if "://" in o["endpoint"] else f"{scheme}://{o['endpoint']}")
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
        # s3a addresses buckets as virtual hosts unless path style is on; pyarrow, given an
        # endpoint, uses path style unless told otherwise.
        kwargs["force_virtual_addressing"] = o.get("path_style", "false").lower() != "true"
    return pafs.S3FileSystem(**kwargs)


class ImageError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@functools.lru_cache(maxsize=16)
def filesystem(root: str, s3: S3Options = ()) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI; cached per process. ``s3``:
    the job's s3a settings (:func:`s3_options`), for s3a://, s3n:// and s3:// URIs."""
    if s3 and root.startswith(("s3://", "s3a://", "s3n://")):
        return s3_filesystem(s3), root.split("://", 1)[1]
    for alias, scheme in _URI_ALIASES.items():
        if root.startswith(alias):
            root = scheme + root[len(alias):]
    if root.startswith("file:"):          # Hadoop's qualified local form, file:/abs/x (io.qualify)
        return pafs.LocalFileSystem(), urllib.parse.unquote(urllib.parse.urlparse(root).path)
    if "://" in root:
        return pafs.FileSystem.from_uri(root)

    return pafs.LocalFileSystem(), os.path.abspath(root)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_stream(path) as fh:
            return fh.readall()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ImageError("missing_image") from None
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such file" in str(exc).lower():
            raise ImageError("missing_image") from None
        raise


def resize_short_side(data: bytes, short_side: int, quality: int) -> tuple[bytes, int, int]:
    """Decode any PIL-readable image, resize so the short side is ``short_side``, encode as JPEG.

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is much
    smaller, which is most of the cost saved on large originals. An RGB JPEG already at the size
    (img2dataset's, downloaded at the shard size) is decoded in full, to check it, and passed
    through byte for byte: re-encoding would only lose quality and time.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError("undecodable_image")
            if im.format == "JPEG" and im.mode == "RGB" and min(w, h) == short_side:
                im.load()
                return data, w, h
            scale = short_side / min(w, h)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            if scale < 1:
                im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            rgb = im.convert("RGB")
            if rgb.size != size:
                rgb = rgb.resize(size, Image.Resampling.BICUBIC)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=quality)
            return out.getvalue(), size[0], size[1]
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageError("undecodable_image") from None


def read_under(root: str, path: Optional[str], s3: S3Options = ()) -> bytes | ImageError:
    """The bytes of ``path`` under ``root`` (a multimedia-commons tree), or why there are none."""
    if path is None:
        return ImageError("missing_image")
    fs, base = filesystem(root, s3)
    try:
        return read_bytes(fs, f"{base.rstrip('/')}/{path}")
    except ImageError as exc:
        return exc


def resized(src: bytes | ImageError, short_side: int, quality: int) -> bytes | ImageError:
    """:func:`resize_short_side`'s JPEG, or the reason there is none (``src`` may be one already)."""
    if isinstance(src, ImageError):
        return src
    try:
        return resize_short_side(src, short_side, quality)[0]
    except ImageError as exc:
        return exc


#: img2dataset's status of a row -> our reject reason (rows it does not have: missing_image).
I2D_STATUS_REASONS: dict[str, str] = {"failed_to_download": "download_failed", "failed_to_resize": "undecodable_image"}


@functools.lru_cache(maxsize=8)
def _row_group_starts(file: str, s3: S3Options = ()) -> tuple[int, ...]:
    fs, path = filesystem(file, s3)
    with fs.open_input_file(path) as fh:
        meta = pq.ParquetFile(fh).metadata
    starts, n = [], 0
    for i in range(meta.num_row_groups):
        starts.append(n)
        n += meta.row_group(i).num_rows
    return tuple(starts + [n])


def _read_group(file: str, group: int, offsets: Sequence[int], s3: S3Options = ()) -> list[Optional[bytes]]:
    fs, path = filesystem(file, s3)
    with fs.open_input_file(path) as fh:
        column = pq.ParquetFile(fh).read_row_group(group, columns=["jpg"]).column("jpg")
    return column.take(list(offsets)).to_pylist()


def read_img2dataset(locators: Sequence[tuple[Optional[str], Optional[int], Optional[str]]],
                     pool: Executor, s3: S3Options = ()) -> list[bytes | ImageError]:
    """The ``jpg`` bytes of each (file, row, status) locator of :func:`pipeline.img2dataset.locate`,
    or the reason it has none.

    Rows are grouped by file and row group, each group read once (in ``pool``) with only the
    ``jpg`` column, so a task reads the img2dataset files of its own shard, not the whole output.
    """
    out: list[bytes | ImageError] = [ImageError("missing_image")] * len(locators)
    wanted: dict[tuple[str, int], list[tuple[int, int]]] = collections.defaultdict(list)
    for i, (file, row, status) in enumerate(locators):
        if file is None or row is None:
            continue
        if status != "success":
            out[i] = ImageError(I2D_STATUS_REASONS.get(status or "", "download_failed"))
            continue
        starts = _row_group_starts(file, s3)
        group = max(0, bisect.bisect_right(starts, row) - 1)
        wanted[(file, group)].append((i, row - starts[group]))
    groups = list(wanted.items())
    read = pool.map(lambda g: _read_group(g[0][0], g[0][1], [o for _, o in g[1]], s3), groups)
    for ((_, _), rows), values in zip(groups, read):
        for (i, _), value in zip(rows, values):
            out[i] = value if value is not None else ImageError("missing_image")
    return out

