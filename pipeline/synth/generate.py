"""Write a synthetic YFCC100M world to disk in the exact real file formats.

Output folder::

    yfcc100m_dataset[.bz2]   25 (or 23) TAB-separated columns, no header
    yfcc100m_places[.bz2]    photo_id<TAB>woeid:Name:Type,...
    yfcc100m_hash[.bz2]      photo_id<TAB>hash (23-column layout only)
    images/<h[0:3]>/<h[3:6]>/<h>.jpg
    world.json               what the world contains (written last: its presence means complete)
    world_photos.parquet     per-photo truth (town, concept, flags) for tests
"""
from __future__ import annotations

import bz2
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.files import atomic_write

from ..yfcc import LAYOUTS, image_relpath
from .geography import load_geography
from .metadata import CHUNK_ROWS, Rates, build_world, generate_chunk
from .world import describe, landmark_color

IMAGE_BATCH = 256
#: Bumped whenever the generator's output changes, so --skip-existing regenerates old worlds.
WORLD_VERSION = 3
#: The authors' released vocabulary (frequency order), shipped with the package: noise tags come from it.
DEFAULT_VOCAB = Path(__file__).resolve().parent / "data" / "vocab_words_100k.txt"
_TSV = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")


class SynthError(Exception):
    """A bad argument or an unusable output folder: reported as one line, exit status 2."""


@dataclass(frozen=True)
class SynthParams:
    out: Path
    photos: int
    seed: int = 0
    layout: int = 25
    images: bool = True
    compress: str = "none"
    image_size: int = 128
    workers: int = 2
    vocab: Optional[Path] = None

    def validate(self) -> None:
        if self.photos < 1:
            raise SynthError(f"--photos must be a positive number of lines, got {self.photos}")
        if self.seed < 0:
            raise SynthError(f"--seed must be >= 0, got {self.seed}")
        if self.layout not in LAYOUTS:
            raise SynthError(f"--layout must be 25 or 23, got {self.layout}")
        if self.compress not in ("none", "bz2"):
            raise SynthError(f"--compress must be none or bz2, got {self.compress!r}")
        if not 32 <= self.image_size <= 1024:
            raise SynthError(f"--image-size must be between 32 and 1024 pixels, got {self.image_size}")
        if self.workers < 1:
            raise SynthError(f"--workers must be >= 1, got {self.workers}")
        if self.vocab is not None and not self.vocab.is_file():
            raise SynthError(f"--vocab {self.vocab}: no such file")

    def fingerprint(self) -> dict:
        d = asdict(self)
        d.pop("workers")
        d["out"] = str(self.out)
        d["vocab"] = str(self.vocab) if self.vocab else None
        d["world_version"] = WORLD_VERSION
        return d


def _open_text(path: Path, compress: str) -> IO[bytes]:
    return bz2.open(str(path) + ".bz2", "wb") if compress == "bz2" else open(path, "wb")


def _render_job(args) -> int:
    """Worker: draw, encode and write one batch of images."""
    from .render import render_batch, write_images

    root, relpaths, looks, rgb, landmark, ambient, salience, seeds, corrupt, size = args
    pixels = render_batch(looks, rgb, landmark, seeds, size, ambient, salience)
    return write_images(Path(root), relpaths, pixels, corrupt)


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SynthError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def is_complete(out: Path, params: SynthParams) -> bool:
    """A world with these parameters is already fully written in ``out``."""
    meta = out / "world.json"
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text())["params"] == params.fingerprint()
    except (ValueError, KeyError):
        return False


def generate(params: SynthParams, progress: Optional[IO[str]] = sys.stderr) -> dict:
    """Generate the world described by ``params``; returns the counts written to world.json."""
    params.validate()
    out = params.out
    _check_out(out)
    # world.json goes last; remove an old one first so a killed run never looks complete.
    (out / "world.json").unlink(missing_ok=True)
    if params.images and (out / "images").exists():
        shutil.rmtree(out / "images")
    t0 = time.perf_counter()
    geo = load_geography()
    rates = Rates()
    world = build_world(geo, params.seed, params.photos, rates, params.vocab or DEFAULT_VOCAB)
    from .render import look_ids, look_table

    looks_tab, _ = look_table()
    columns = list(LAYOUTS[params.layout])
    counts = {"lines": 0, "photos": 0, "videos": 0, "geotagged": 0, "no_town": 0, "no_tags": 0,
              "images": 0, "missing_images": 0, "corrupt_images": 0, "users": len(world.users),
              "towns": len(geo), "tags": len(world.tags.strings)}
    files = [_open_text(out / "yfcc100m_dataset", params.compress),
             _open_text(out / "yfcc100m_places", params.compress)]
    if params.layout == 23:
        files.append(_open_text(out / "yfcc100m_hash", params.compress))
    truth_writer = None
    pool = ProcessPoolExecutor(params.workers) if params.images and params.workers > 1 else None
    pending = []
    try:
        for chunk, start in enumerate(range(0, params.photos, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, params.photos - start)
            dataset, places, truth = generate_chunk(world, chunk, start, n)
            pacsv.write_csv(dataset.select(columns), files[0], _TSV)
            pacsv.write_csv(places, files[1], _TSV)
            if params.layout == 23:
                pacsv.write_csv(dataset.select(["photo_id", "photo_hash"]), files[2], _TSV)
            table = pa.Table.from_pandas(truth, preserve_index=False)
            if truth_writer is None:
                truth_writer = pq.ParquetWriter(out / ".world_photos.parquet.tmp", table.schema)
            truth_writer.write_table(table)
            counts["lines"] += n
            counts["videos"] += int(truth["video"].sum())
            counts["photos"] += int((~truth["video"]).sum())
            counts["geotagged"] += int((~truth["no_geo"]).sum())
            counts["no_town"] += int(truth["no_town"].sum())
            counts["no_tags"] += int(truth["no_tags"].sum())
            if params.images:
                pending += _submit_images(pool, out, truth, looks_tab, look_ids, geo, params, counts)
                counts["images"] += sum(f.result() if hasattr(f, "result") else f for f in pending)
                pending = []
            if progress is not None:
                rate = counts["lines"] / max(time.perf_counter() - t0, 1e-9)
                print(f"synth: {counts['lines']:,}/{params.photos:,} lines, {counts['images']:,} images "
                      f"({rate:,.0f} lines/s)", file=progress, flush=True)
    finally:
        for f in files:
            f.close()
        if truth_writer is not None:
            truth_writer.close()
        if pool is not None:
            pool.shutdown()
    os.replace(out / ".world_photos.parquet.tmp", out / "world_photos.parquet")
    counts["seconds"] = round(time.perf_counter() - t0, 2)
    meta = describe(params.fingerprint(), counts)
    atomic_write(out / "world.json", json.dumps(meta, indent=2, ensure_ascii=False))
    return counts


def _submit_images(pool, out: Path, truth, looks_tab, look_ids, geo, params: SynthParams, counts: dict) -> list:
    """Queue image batches for the photos of a chunk that the mirror holds."""
    has = ~truth["missing_image"].to_numpy()
    counts["missing_images"] += int((~truth["video"] & truth["missing_image"]).sum())
    sel = truth[has]
    counts["corrupt_images"] += int(sel["corrupt_image"].sum())
    towns = geo.towns
    looks = looks_tab[look_ids(sel["concept"].to_numpy(), sel["continent_code"].to_numpy())]
    ti = sel["town_index"].to_numpy()
    rgb = landmark_color(towns["lat"].to_numpy()[ti], towns["lon"].to_numpy()[ti])
    rel = [image_relpath(h) for h in sel["photo_hash"]]
    jobs = []
    for i in range(0, len(sel), IMAGE_BATCH):
        s = slice(i, i + IMAGE_BATCH)
        args = (str(out / "images"), rel[s], looks[s], rgb[s], sel["landmark"].to_numpy()[s],
                sel["ambient"].to_numpy()[s], sel["salience"].to_numpy()[s], sel["image_seed"].to_numpy()[s],
                sel["corrupt_image"].to_numpy()[s], params.image_size)
        jobs.append(pool.submit(_render_job, args) if pool is not None else _render_job(args))
    return jobs
