"""The YFCC100M file formats, in one place (docs/data-formats.md).

Everything that knows the column layout of ``yfcc100m_dataset``, ``yfcc100m_places`` and
``yfcc100m_hash`` lives here: the synthetic-world writer, the Spark cleaning job and the tests all
import these names, so the two layouts and the decoding rules are written down exactly once.

This module is pure Python (no Spark): :func:`parse_line` is the reference parser, used on small
inputs and as the oracle that the Spark column expressions in :mod:`pipeline.parse` are tested
against.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional
from urllib.parse import unquote_plus

# --- layouts -------------------------------------------------------------------------------------

#: The 2016 release: 25 TAB-separated columns, no header.
COLUMNS_25: tuple[str, ...] = (
    "line_number", "photo_id", "photo_hash", "user_nsid", "user_nickname", "date_taken",
    "date_uploaded", "capture_device", "title", "description", "user_tags", "machine_tags",
    "longitude", "latitude", "accuracy", "page_url", "download_url", "license_name",
    "license_url", "server_id", "farm_id", "secret", "secret_original", "extension", "marker",
)
#: The 2014 release and the public AWS copy: no line_number, no photo_hash (23 columns).
COLUMNS_23: tuple[str, ...] = tuple(c for c in COLUMNS_25 if c not in ("line_number", "photo_hash"))
LAYOUTS: dict[int, tuple[str, ...]] = {25: COLUMNS_25, 23: COLUMNS_23}

#: Columns whose values are form-URL-encoded (``+`` is a space, ``%XX`` is UTF-8).
FREE_TEXT_COLUMNS: tuple[str, ...] = (
    "user_nickname", "capture_device", "title", "description", "user_tags", "machine_tags",
)

#: Place types that name the region level of a ``yfcc100m_places`` record, smallest first.
REGION_PLACE_TYPES: tuple[str, ...] = (
    "State", "Province", "Region", "Special Administrative Region", "Territory",
    "Autonomous Community", "Governorate", "Prefecture", "Department",
)

MARKER_PHOTO, MARKER_VIDEO = 0, 1
ACCURACY_MIN, ACCURACY_MAX = 1, 16
#: Derived YFCC copies write this for "no coordinates" instead of empty fields.
PLACEHOLDER_COORDINATE = -1.0


class YfccFormatError(ValueError):
    """A line that is not a well-formed YFCC100M record; ``reason`` is a stable reject code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- decoding and tag normalisation (docs/data-formats.md, docs/method.md) ----------------------------

_DIGIT = re.compile(r"\d")        # any Unicode decimal digit (Java: \p{Nd})
_SPACE = re.compile(r"\s+")       # any Unicode white space (Java: (?U)\s)


def decode(text: str) -> str:
    """Form-URL-decode a free-text field: ``+`` is a space, ``%XX`` are UTF-8 bytes.

    Plain ``unquote`` would leave ``new+york`` as is; YFCC needs ``unquote_plus``. Malformed
    UTF-8 becomes U+FFFD rather than an exception, as it does in Spark's decoder.
    """
    return unquote_plus(text, encoding="utf-8", errors="replace")


def normalize_tag(tag: str, *, encoded: bool = True) -> Optional[str]:
    """Normalise one user tag as the paper does: decode, lower-case, remove spaces.

    Returns None for tags the paper drops: empty ones and those containing a digit.
    """
    text = decode(tag) if encoded else tag
    text = _SPACE.sub("", text.lower())
    if not text or _DIGIT.search(text):
        return None
    return text


def split_tags(user_tags: str) -> list[str]:
    """The decoded tags of a ``user_tags`` field, in file order (split on ``,`` first)."""
    return [decode(t) for t in user_tags.split(",") if t]


def normalized_tags(user_tags: str) -> list[str]:
    """Distinct normalised tags of a ``user_tags`` field, first occurrence order."""
    seen: dict[str, None] = {}
    for raw in user_tags.split(","):
        if raw:
            tag = normalize_tag(raw)
            if tag is not None:
                seen.setdefault(tag, None)
    return list(seen)


def unpadded_hex(digest: bytes) -> str:
    """YFCC's photo_hash spelling: each byte as hex WITHOUT zero padding (28-32 characters)."""
    return "".join(format(b, "x") for b in digest)


def image_relpath(photo_hash: str) -> str:
    """Path of a photo in the multimedia-commons mirror: ``<h[0:3]>/<h[3:6]>/<h>.jpg``."""
    return f"{photo_hash[0:3]}/{photo_hash[3:6]}/{photo_hash}.jpg"


# --- records -------------------------------------------------------------------------------------

@dataclass
class YfccRecord:
    """One typed ``yfcc100m_dataset`` line; free text decoded, missing values as None."""

    photo_id: int
    photo_hash: Optional[str]
    line_number: Optional[int]
    user_nsid: str
    user_nickname: str
    date_taken: Optional[datetime]
    date_uploaded: Optional[int]
    capture_device: str
    title: str
    description: str
    user_tags: list[str]
    machine_tags: list[str]
    longitude: Optional[float]
    latitude: Optional[float]
    accuracy: Optional[int]
    page_url: str
    download_url: str
    license_name: str
    license_url: str
    server_id: str
    farm_id: str
    secret: str
    secret_original: str
    extension: str
    marker: int
    raw: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.marker == MARKER_VIDEO

    @property
    def has_geo(self) -> bool:
        return self.longitude is not None and self.latitude is not None


def split_line(line: str) -> list[str]:
    """Split a dataset line into its fields, tolerating CRLF and a missing final newline."""
    return line.rstrip("\r\n").split("\t")


def _int(value: str, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise YfccFormatError(f"bad_{column}", f"{column}={value[:40]!r} is not an integer") from None


def _optional_int(value: str, column: str) -> Optional[int]:
    return None if value == "" else _int(value, column)


def parse_coordinates(lon: str, lat: str, accuracy: str) -> tuple[Optional[float], Optional[float], Optional[int]]:
    """Typed (longitude, latitude, accuracy); all None when the photo is not geotagged.

    Empty fields and the ``-1.0`` placeholder pair of derived copies both mean "no geo";
    ``3.0E-6`` exponents are valid. Coordinates outside the globe are an error, not a guess.
    """
    if lon == "" and lat == "":
        return None, None, None
    try:
        x, y = float(lon), float(lat)
    except ValueError:
        raise YfccFormatError("bad_coordinates", f"longitude={lon[:40]!r} latitude={lat[:40]!r}") from None
    if x == PLACEHOLDER_COORDINATE and y == PLACEHOLDER_COORDINATE:
        return None, None, None
    if not (-180.0 <= x <= 180.0 and -90.0 <= y <= 90.0):
        raise YfccFormatError("coordinates_out_of_range", f"longitude={x} latitude={y}")
    acc = _optional_int(accuracy, "accuracy")
    return x, y, acc


def parse_date_taken(value: str) -> Optional[datetime]:
    """``YYYY-MM-DD HH:MM:SS.0`` (camera-local); junk dates become None rather than errors."""
    if not value or value == "null":
        return None
    try:
        return datetime.strptime(value[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def parse_line(line: str, layout: Optional[int] = None) -> YfccRecord:
    """Parse one ``yfcc100m_dataset`` line of either layout into a :class:`YfccRecord`.

    The layout is detected from the field count unless given. Raises :class:`YfccFormatError`
    (with a reject reason) for lines that cannot be a record.
    """
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:   # undecodable bytes read with errors="surrogateescape"
        raise YfccFormatError("invalid_utf8", "bytes that are not UTF-8") from None
    fields = split_line(line)
    n = len(fields)
    if layout is None:
        layout = n
    if layout not in LAYOUTS or n != layout:
        raise YfccFormatError("wrong_column_count", f"{n} fields, expected {layout if layout in LAYOUTS else '25 or 23'}")
    raw = dict(zip(LAYOUTS[layout], fields))
    lon, lat, acc = parse_coordinates(raw["longitude"], raw["latitude"], raw["accuracy"])
    marker = _int(raw["marker"], "marker")
    if marker not in (MARKER_PHOTO, MARKER_VIDEO):
        raise YfccFormatError("bad_marker", f"marker={marker}")
    return YfccRecord(
        photo_id=_int(raw["photo_id"], "photo_id"),
        photo_hash=raw.get("photo_hash") or None,
        line_number=_optional_int(raw["line_number"], "line_number") if "line_number" in raw else None,
        user_nsid=raw["user_nsid"],
        user_nickname=decode(raw["user_nickname"]),
        date_taken=parse_date_taken(raw["date_taken"]),
        date_uploaded=_optional_int(raw["date_uploaded"], "date_uploaded"),
        capture_device=decode(raw["capture_device"]),
        title=decode(raw["title"]),
        description=decode(raw["description"]),
        user_tags=split_tags(raw["user_tags"]),
        machine_tags=split_tags(raw["machine_tags"]),
        longitude=lon,
        latitude=lat,
        accuracy=acc,
        page_url=raw["page_url"],
        download_url=raw["download_url"],
        license_name=raw["license_name"],
        license_url=raw["license_url"],
        server_id=raw["server_id"],
        farm_id=raw["farm_id"],
        secret=raw["secret"],
        secret_original=raw["secret_original"],
        extension=raw["extension"],
        marker=marker,
        raw=raw,
    )


# --- places --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    woeid: int
    name: str
    type: str


def parse_places(value: str) -> list[Place]:
    """The entries of a ``yfcc100m_places`` value, smallest first; names decoded.

    Split on ``,`` then ``:`` (names are URL-encoded, so neither occurs inside one); a type may
    itself contain spaces ("Special Administrative Region") but never a colon.
    """
    places = []
    for entry in value.rstrip("\r\n").split(","):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise YfccFormatError("bad_place_entry", f"{entry[:80]!r} is not woeid:name:type")
        woeid, name, ptype = parts
        places.append(Place(_int(woeid, "woeid"), decode(name), ptype))
    return places


def parse_places_line(line: str) -> tuple[int, list[Place]]:
    """One ``yfcc100m_places`` line: ``photo_id<TAB>entries`` (entries may be empty)."""
    fields = split_line(line)
    if len(fields) != 2:
        raise YfccFormatError("wrong_column_count", f"{len(fields)} fields in a places line, expected 2")
    return _int(fields[0], "photo_id"), parse_places(fields[1])


def place_levels(places: list[Place]) -> dict[str, Optional[str]]:
    """Town, region and country names of a places record (None where absent)."""
    levels: dict[str, Optional[str]] = {"town": None, "region": None, "country": None}
    for p in places:
        if p.type == "Town" and levels["town"] is None:
            levels["town"] = p.name
        elif p.type in REGION_PLACE_TYPES and levels["region"] is None:
            levels["region"] = p.name
        elif p.type == "Country" and levels["country"] is None:
            levels["country"] = p.name
    return levels
