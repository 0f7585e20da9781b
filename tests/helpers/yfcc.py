"""Crafted YFCC100M lines and raw folders for tests, in the real formats of pipeline.yfcc."""
from __future__ import annotations

import bz2
import hashlib
from pathlib import Path
from typing import Iterable, Optional

from pipeline import yfcc

TOWNS = {
    "nyc": "2459115:New+York:Town,2347591:New+York:State,23424977:United+States:Country,56043648:America%2FNew_York:Timezone",
    "galway": "91476962:Lettershea:Town,2345255:Galway:County,23424803:Ireland:Country,28350896:Europe%2FDublin:Timezone",
    "paris": "615702:Paris:Town,12597155:%C3%8Ele-de-France:Region,23424819:France:Country,28350911:Europe%2FParis:Timezone",
    "notown": "2347591:New+York:State,23424977:United+States:Country",
    # Yahoo lists the UK's nations as Country entries before the United Kingdom itself.
    "london": "20089369:Soho:Suburb,44418:London:Town,23416974:Greater+London:County,24554868:England:Country,"
              "23424975:United+Kingdom:Country,28350927:Europe%2FLondon:Timezone",
    "kyoto": "15015372:Kyoto:Town,2345847:Kyoto:Prefecture,23424856:Japan:Country,26198235:Asia%2FTokyo:Timezone",
}
COORDS = {"nyc": (-73.98, 40.74), "galway": (-9.05, 53.27), "paris": (2.35, 48.85), "notown": (-75.0, 43.0),
          "london": (-0.13, 51.51), "kyoto": (135.77, 35.01)}


def photo_hash(download_url: str) -> str:
    return yfcc.unpadded_hex(hashlib.md5(download_url.encode()).digest())


def line(pid: int, *, tags: str = "cat,dog", lon: str = "-73.98", lat: str = "40.74",
         accuracy: str = "16", marker: str = "0", line_number: Optional[int] = None,
         description: str = "", layout: int = 25, **override: str) -> str:
    url = f"http://farm1.staticflickr.com/1/{pid}_abc.jpg"
    values = {
        "line_number": str(pid if line_number is None else line_number), "photo_id": str(pid),
        "photo_hash": photo_hash(url), "user_nsid": "12345@N00", "user_nickname": "someone",
        "date_taken": "2012-02-16 09:56:37.0", "date_uploaded": "1331840483",
        "capture_device": "Canon+EOS", "title": "a+title", "description": description,
        "user_tags": tags, "machine_tags": "", "longitude": lon, "latitude": lat, "accuracy": accuracy,
        "page_url": f"http://www.flickr.com/photos/12345@N00/{pid}/", "download_url": url,
        "license_name": "Attribution License", "license_url": "http://creativecommons.org/licenses/by/2.0/",
        "server_id": "1", "farm_id": "1", "secret": "abc", "secret_original": "def", "extension": "jpg",
        "marker": marker,
    }
    values.update(override)
    return "\t".join(values[c] for c in yfcc.LAYOUTS[layout])


def at(town: str, photo_id: int, **kw) -> str:
    lon, lat = COORDS[town]
    kw.setdefault("lon", str(lon))
    kw.setdefault("lat", str(lat))
    return line(photo_id, **kw)


def write_raw(directory: Path, lines: Iterable[str], places: dict[int, str], *, compress: bool = False,
              layout: int = 25, hashes: Optional[dict[int, str]] = None, crlf_from: int = -1,
              final_newline: bool = True) -> Path:
    """A raw folder: yfcc100m_dataset (optionally .bz2), yfcc100m_places, yfcc100m_hash."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = list(lines)
    text = "".join(l + ("\r\n" if 0 <= crlf_from <= i else "\n") for i, l in enumerate(lines))
    if not final_newline:
        text = text.rstrip("\r\n")
    if compress:
        (directory / "yfcc100m_dataset.bz2").write_bytes(bz2.compress(text.encode()))
    else:
        (directory / "yfcc100m_dataset").write_text(text, encoding="utf-8")
    (directory / "yfcc100m_places").write_text("".join(f"{k}\t{v}\n" for k, v in places.items()))
    if layout == 23:
        (directory / "yfcc100m_hash").write_text("".join(f"{k}\t{v}\n" for k, v in (hashes or {}).items()))
    return directory
