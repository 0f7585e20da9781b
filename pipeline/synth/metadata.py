"""Vectorised generation of YFCC100M metadata rows for the synthetic world.

A world is drawn once (towns, users, the tag table); photos are then drawn in fixed-size chunks,
each from its own seeded stream, as numpy/pyarrow columns. No Python loop runs per photo: strings
are assembled with pyarrow compute kernels, tag lists through list offsets, hashes in
:mod:`pipeline.synth.md5`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..yfcc import COLUMNS_25, normalize_tag
from .geography import Geography
from .md5 import encode_ascii, md5_many
from .world import (CAMERA_TAGS, CONCEPTS, DIGIT_TAG_FORMATS, EVENT_TAGS, FLICKR_HOME_WEIGHT,
                    FLICKR_TRAVEL_WEIGHT, LANGUAGE_OF_COUNTRY, LANGUAGES, LOCAL_WORD_PROBABILITY,
                    town_weights)

CHUNK_ROWS = 100_000          # rows per independently seeded chunk (fixed: part of determinism)
ID_SPACE = 13_000_000_000     # photo ids spread up to ~1.3e10, past int32 as in the real data
SALIENCE_MIN = 0.3            # per-photo concept salience is uniform on [SALIENCE_MIN, 1]
SALIENCE_MEAN = (SALIENCE_MIN + 1.0) / 2
#: Share of a user's photos at a place that carry the user's word for that place.
STAY_WORD_PROBABILITY = 0.6
#: Mean photos per user. Small enough that a test gallery holds about one photo per user, as on
#: Flickr, so images near a query location come from many people with their own tags.
PHOTOS_PER_USER = 12
T_FIRST, T_LAST = 1_104_537_600, 1_396_224_000   # 2005-01-01 .. 2014-03-31, epoch seconds

#: (license_name, license_url, share). Every YFCC100M line is Creative Commons (there is no "All
#: Rights Reserved" line); shares are those of the first 1,000 real lines.
LICENSES = (
    ("Attribution License", "http://creativecommons.org/licenses/by/2.0/", 0.18),
    ("Attribution-NoDerivs License", "http://creativecommons.org/licenses/by-nd/2.0/", 0.06),
    ("Attribution-NonCommercial-NoDerivs License", "http://creativecommons.org/licenses/by-nc-nd/2.0/", 0.25),
    ("Attribution-NonCommercial License", "http://creativecommons.org/licenses/by-nc/2.0/", 0.14),
    ("Attribution-NonCommercial-ShareAlike License", "http://creativecommons.org/licenses/by-nc-sa/2.0/", 0.27),
    ("Attribution-ShareAlike License", "http://creativecommons.org/licenses/by-sa/2.0/", 0.10),
)
DEVICES = (
    "Canon EOS 5D Mark II", "Canon EOS 400D Digital", "Canon PowerShot SD1000", "NIKON D90", "NIKON D700",
    "NIKON D3100", "Apple iPhone 4S", "Apple iPhone 5", "SONY DSC-W55", "Panasonic DMC-FZ18",
    "OLYMPUS E-M5", "FUJIFILM FinePix S5600", "PENTAX K10D", "SAMSUNG SGH-i900", "",
)


@dataclass(frozen=True)
class Rates:
    """How often the rows the pipeline must drop (and other oddities) occur."""

    video: float = 0.02
    no_geo: float = 0.10
    no_tags: float = 0.05
    no_town: float = 0.03            # geotagged, but the places record has no Town
    place_tagger: float = 0.75       # photos that carry place-name tags
    travel: float = 0.3              # photos taken away from the user's home town
    landmark: float = 0.4            # photos that show their town's landmark glyph
    ambient: float = 0.85            # photos framed in their town's colour (the look of the place)
    long_description: float = 1e-4   # ~200 KB descriptions (real lines get that long)
    missing_image: float = 0.002     # photos absent from the image mirror
    corrupt_image: float = 0.001     # truncated JPEGs


@dataclass
class TagTable:
    """Every tag string the world can emit, as written in ``user_tags`` (lower-case, URL-encoded),
    sorted so that sorting tag ids sorts the strings (YFCC lists tags alphabetically)."""

    strings: np.ndarray            # object array of encoded tags, sorted
    index: dict[str, int]
    arrow: pa.Array                # the same strings, for vectorised take

    @classmethod
    def build(cls, tags: set[str]) -> "TagTable":
        strings = np.array(sorted(tags), dtype=object)
        return cls(strings, {s: i for i, s in enumerate(strings)}, pa.array(strings.tolist(), pa.string()))

    def ids(self, tags) -> np.ndarray:
        return np.array([self.index[t] for t in tags], dtype=np.int32)


def encode_tag(text: str) -> str:
    """A tag as Flickr writes it in ``user_tags``: lower-case, form-URL-encoded."""
    return quote_plus(text.lower(), safe="")


def place_forms(name: str) -> tuple[str, str]:
    """(spaced, joined) encoded forms of a place name: ``new+york`` and ``newyork``."""
    low = name.lower()
    return encode_tag(low), encode_tag(low.replace(" ", ""))


@dataclass
class World:
    geo: Geography
    seed: int
    n_photos: int
    rates: Rates
    tags: TagTable
    town_cum: np.ndarray           # (towns, concepts) cumulative concept prevalence
    town_place_tags: np.ndarray    # (towns, 4 levels, 2 forms) tag ids
    town_lang: np.ndarray          # language index per town
    concept_tags: np.ndarray       # (concepts, languages) tag ids (English where no local word)
    related_tags: np.ndarray       # (concepts, 2) tag ids
    camera_tags: np.ndarray
    device_camera_tag: np.ndarray  # per entry of DEVICES: its brand's camera tag id, -1 for none
    event_tags: np.ndarray
    digit_tags: np.ndarray
    noise_tags: np.ndarray         # tag ids, most frequent first
    noise_cum: np.ndarray
    users: pd.DataFrame            # nsid, nickname, device, home, travel, habits
    user_cum: np.ndarray
    dest_cum: np.ndarray           # travel destinations by popularity
    places_arrow: pa.Array         # towns*5 places strings: plain, +suburb, +county, both, no-town


def _noise_words(vocab_path: Path, exclude: set[str], limit: int = 30_000) -> list[str]:
    """Words from the authors' released vocabulary (frequency order) that are not place or concept
    words of this world, to serve as realistic noise tags."""
    words = []
    if vocab_path.exists():
        for line in vocab_path.read_text(encoding="utf-8").splitlines():
            w = line.strip()
            if w and w not in exclude and normalize_tag(w, encoded=False) == w:
                words.append(w)
                if len(words) >= limit:
                    break
    if len(words) < 500:   # no vocabulary file: still a usable world, with synthetic words
        rng = np.random.default_rng(0)
        syll = ["ka", "lo", "mi", "ra", "te", "no", "su", "vi", "ze", "po", "an", "el", "or"]
        words += ["".join(rng.choice(syll, size=rng.integers(2, 4))) + "x" for _ in range(2000)]
    return list(dict.fromkeys(words))


def build_world(geo: Geography, seed: int, n_photos: int, rates: Rates, vocab_path: Path) -> World:
    """Draw the fixed parts of a world: tag table, users and their habits, place strings."""
    rng = np.random.default_rng([seed, 0])
    towns = geo.towns
    nt = len(towns)

    place_names = {lvl: towns[col].to_numpy() for lvl, col in
                   (("town", "name"), ("region", "region"), ("country", "country"), ("continent", "continent"))}
    forms = {lvl: [place_forms(n) for n in names] for lvl, names in place_names.items()}
    exclude = {normalize_tag(f[1]) for fl in forms.values() for f in fl} | {c.name for c in CONCEPTS}
    exclude |= {w for c in CONCEPTS for w in (*c.related, *c.local_names.values())}
    exclude |= set(CAMERA_TAGS) | set(EVENT_TAGS)
    noise = _noise_words(vocab_path, exclude)

    digit = sorted({f.format(year=y, n=n) for f in DIGIT_TAG_FORMATS for y in range(2004, 2015)
                    for n in (50, 85, 200, 300, 700, 1234, 5000)})
    all_tags = {encode_tag(w) for w in noise} | set(digit) | set(CAMERA_TAGS) | set(EVENT_TAGS)
    all_tags |= {f for fl in forms.values() for pair in fl for f in pair}
    for c in CONCEPTS:
        all_tags |= {encode_tag(c.name), *map(encode_tag, c.related), *map(encode_tag, c.local_names.values())}
    tags = TagTable.build(all_tags)

    town_place_tags = np.stack([
        np.array([[tags.index[a], tags.index[b]] for a, b in forms[lvl]], dtype=np.int32)
        for lvl in ("town", "region", "country", "continent")], axis=1)
    concept_tags = np.array([[tags.index[encode_tag(c.local_names.get(lang, c.name))] for lang in LANGUAGES]
                             for c in CONCEPTS], dtype=np.int32)
    related = np.array([[tags.index[encode_tag(r)] for r in (list(c.related) * 2)[:2]] for c in CONCEPTS],
                       dtype=np.int32)
    noise_ids = tags.ids([encode_tag(w) for w in noise])
    noise_p = 1.0 / (np.arange(len(noise_ids)) + 20.0)
    lang_index = {lang: i for i, lang in enumerate(LANGUAGES)}
    town_lang = np.array([lang_index[LANGUAGE_OF_COUNTRY.get(cc, "en")] for cc in towns["cc"]], dtype=np.int8)

    # Flickr's users skew to North America and Europe; big towns draw more people.
    bias = towns["continent_code"].map({"NA": 3.0, "EU": 3.0, "OC": 1.5, "AS": 1.0, "SA": 0.8, "AF": 0.5}).to_numpy()
    country = lambda table: towns["cc"].map(table).fillna(1.0).to_numpy()
    home_w = towns["population"].to_numpy() ** 1.2 * bias * country(FLICKR_HOME_WEIGHT)
    dest_w = towns["population"].to_numpy() ** 1.3 * bias * country(FLICKR_TRAVEL_WEIGHT)
    n_users = int(max(20, n_photos // PHOTOS_PER_USER))
    users = pd.DataFrame({
        "nsid": [f"{int(a)}@N{int(b):02d}" for a, b in zip(rng.integers(10_000, 99_999_999, n_users),
                                                            rng.integers(0, 8, n_users))],
        "home": rng.choice(nt, size=n_users, p=home_w / home_w.sum()),
        "travel": np.clip(rng.beta(2, 4, n_users) * rates.travel / (2 / 6), 0, 0.95),
        "device": rng.integers(0, len(DEVICES), n_users),
        "habit0": noise_ids[rng.integers(0, min(5000, len(noise_ids)), n_users)],
        "habit1": noise_ids[rng.integers(0, min(5000, len(noise_ids)), n_users)],
        "place_tagger": rng.random(n_users) < 0.9,
    })
    syll = np.array(["an", "bel", "cor", "da", "el", "fi", "gu", "ho", "ja", "ki", "lu", "mo", "ne", "ö", "pa",
                     "ri", "sa", "to", "ul", "vé", "wa", "xi", "yo", "zu"])
    parts = syll[rng.integers(0, len(syll), (n_users, 4))]
    sep = np.where(rng.random(n_users) < 0.3, " ", np.where(rng.random(n_users) < 0.5, ".", ""))
    users["nickname"] = [quote_plus(f"{a}{b}{s}{c}{d}") for (a, b, c, d), s in zip(parts, sep)]
    activity = rng.lognormal(0, 1.2, n_users)
    cum = lambda w: np.cumsum(w / w.sum())

    places_arrow = pa.array(_places_strings(towns).ravel().tolist(), pa.string())
    return World(geo=geo, seed=seed, n_photos=n_photos, rates=rates, tags=tags,
                 town_cum=np.cumsum(town_weights(towns), axis=1), town_place_tags=town_place_tags,
                 town_lang=town_lang, concept_tags=concept_tags, related_tags=related,
                 camera_tags=tags.ids(CAMERA_TAGS), device_camera_tag=_device_camera_tags(tags),
                 event_tags=tags.ids(EVENT_TAGS), digit_tags=tags.ids(digit),
                 noise_tags=noise_ids, noise_cum=cum(noise_p), users=users, user_cum=cum(activity),
                 dest_cum=cum(dest_w), places_arrow=places_arrow)


#: Brand word in a capture device's name -> the camera tag its owners write.
_BRAND_TAG = {"canon": "canon", "nikon": "nikon", "iphone": "iphone", "sony": "sony", "panasonic": "lumix",
              "olympus": "olympus", "fujifilm": "fuji", "pentax": "pentax"}


def _device_camera_tags(tags: TagTable) -> np.ndarray:
    """Camera tag id of each entry of ``DEVICES`` (-1 where the brand has no tag): people tag the
    camera they own, so camera tags follow the ``capture_device`` column."""
    out = np.full(len(DEVICES), -1, dtype=np.int32)
    for i, device in enumerate(DEVICES):
        words = device.lower().split()
        brand = next((_BRAND_TAG[w] for w in words if w in _BRAND_TAG), None)
        if brand is not None:
            out[i] = tags.index[brand]
    return out


def _places_strings(towns: pd.DataFrame) -> np.ndarray:
    """The five ``yfcc100m_places`` values a photo at each town can get (one loop per town)."""
    out = np.empty((len(towns), 5), dtype=object)
    for i, t in enumerate(towns.itertuples(index=False)):
        enc = lambda s: quote_plus(s, safe="")
        town = f"{t.woeid_town}:{enc(t.name)}:Town"
        sub = f"{t.woeid_suburb}:{enc(t.suburb)}:Suburb," if t.suburb else ""
        county = f",{t.woeid_county}:{enc(t.county)}:County" if t.county else ""
        tail = (f"{t.woeid_region}:{enc(t.region)}:{t.region_type},{t.woeid_country}:{enc(t.country)}:Country,"
                f"{t.woeid_timezone}:{enc(t.timezone)}:Timezone")
        out[i] = [f"{town},{tail}", f"{sub}{town},{tail}", f"{town}{county},{tail}",
                  f"{sub}{town}{county},{tail}", tail]
    return out


def _draw(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


def _pair_uniform(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number fixed by the pair (a, b) and the world's seed (splitmix64 of the
    pair): the same in every chunk, so a property of a (user, town) pair needs no table."""
    x = (np.asarray(a, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.asarray(b, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


_HEX2 = pa.array([format(i, "02x") for i in range(256)])
_HEX_UNPADDED = pa.array([format(i, "x") for i in range(256)])


def _hex(byte_matrix: np.ndarray, table: pa.Array) -> pa.Array:
    """Hex strings from a (n, k) uint8 matrix, one pyarrow take + join per byte column."""
    return pc.binary_join_element_wise(*[table.take(pa.array(byte_matrix[:, j])) for j in range(byte_matrix.shape[1])], "")


def _s(values) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def generate_chunk(world: World, chunk: int, start: int, n: int) -> tuple[pa.Table, pa.Table, pd.DataFrame]:
    """Rows ``start .. start+n`` of the world: (dataset columns, places, truth and image jobs)."""
    rng = np.random.default_rng([world.seed, 1, chunk])
    r = world.rates
    towns = world.geo.towns
    u = rng.random((n, 24))

    # Who, where, when.
    user = _draw(world.user_cum, u[:, 0])
    us = world.users
    travelling = u[:, 1] < us["travel"].to_numpy()[user]
    town = np.where(travelling, _draw(world.dest_cum, u[:, 2]), us["home"].to_numpy()[user])
    scatter_km = np.where(u[:, 3] < 0.7, 2.0, 8.0)
    lat0, lon0 = towns["lat"].to_numpy()[town], towns["lon"].to_numpy()[town]
    lat = np.clip(lat0 + rng.normal(0, 1, n) * scatter_km / 111.0, -89.999, 89.999)
    lon = lon0 + rng.normal(0, 1, n) * scatter_km / (111.0 * np.maximum(np.cos(np.radians(lat0)), 0.05))
    lon = (lon + 180.0) % 360.0 - 180.0
    stride = ID_SPACE // max(world.n_photos, 1)
    rows = np.arange(start, start + n, dtype=np.int64)
    slots = start + rng.permutation(n)               # file order is not upload order
    photo_id = slots * stride + rng.integers(1, max(stride, 2), n) + 1_000_000
    frac = photo_id / float(ID_SPACE + 1_000_000)
    uploaded = (T_FIRST + (T_LAST - T_FIRST) * np.sqrt(frac)).astype(np.int64)
    taken = uploaded - (rng.exponential(20, n) * 86400).astype(np.int64)
    taken = np.where(u[:, 4] < 0.002, rng.integers(0, 10 * 365 * 86400, n), taken)   # junk camera clocks

    # What: one visual concept per photo, drawn from the town's prevalence.
    concept = (u[:, 5][:, None] > world.town_cum[town]).sum(axis=1).clip(0, len(CONCEPTS) - 1)
    lang = world.town_lang[town]
    local = (lang > 0) & (u[:, 6] < LOCAL_WORD_PROBABILITY)
    concept_tag = world.concept_tags[concept, np.where(local, lang, 0)]

    # Flags for rows the pipeline must drop.
    video = u[:, 7] < r.video
    no_geo = u[:, 8] < r.no_geo
    no_town = ~no_geo & (u[:, 9] < r.no_town)
    no_tags = u[:, 10] < r.no_tags
    place_tagger = us["place_tagger"].to_numpy()[user] & (u[:, 11] < r.place_tagger / 0.9)

    # Tags: a (n, k) matrix of tag ids, -1 for absent; then sorted, de-duplicated, joined.
    # How prominent the concept is in the photo (0.3 faint .. 1 fills the frame): people tag what
    # stands out, so the concept's tags get likelier with it (0.55 and 0.25 on average).
    salience = SALIENCE_MIN + (1 - SALIENCE_MIN) * u[:, 23]
    cols = [np.where(u[:, 12] < 0.55 * salience / SALIENCE_MEAN, concept_tag, -1)]
    cols += [np.where(rng.random(n) < 0.25 * salience / SALIENCE_MEAN, world.related_tags[concept, j], -1)
             for j in range(2)]
    form = (rng.random((n, 4)) < 0.5).astype(np.int64)
    for lvl, p in enumerate((0.85, 0.5, 0.75, 0.35)):       # town, region, country, continent
        cols.append(np.where(place_tagger & (rng.random(n) < p), world.town_place_tags[town, lvl, form[:, lvl]], -1))
    camera = world.device_camera_tag[us["device"].to_numpy()[user]]      # the brand of the user's camera
    cols.append(np.where((camera >= 0) & (rng.random(n) < 0.15), camera, -1))
    cols.append(np.where(rng.random(n) < 0.12, world.event_tags[rng.integers(0, len(world.event_tags), n)], -1))
    cols.append(np.where(rng.random(n) < 0.25, world.digit_tags[rng.integers(0, len(world.digit_tags), n)], -1))
    cols += [np.where(rng.random(n) < 0.5, us[h].to_numpy()[user], -1) for h in ("habit0", "habit1")]
    # A word bound to this user at this place (a friend's name, the hotel, the family's house): on
    # their photos there, on no one else's. Training sees it tied to a place; other people's photos
    # of that place do not carry it.
    stay = world.noise_tags[_draw(world.noise_cum, _pair_uniform(user, town, world.seed))]
    cols.append(np.where(rng.random(n) < STAY_WORD_PROBABILITY, stay, -1))
    n_noise = np.minimum(rng.poisson(2.0, n) + (rng.random(n) < 0.04) * rng.integers(6, 13, n), 12)
    noise = world.noise_tags[_draw(world.noise_cum, rng.random((n, 12)))]
    noise = np.where(np.arange(12)[None, :] < n_noise[:, None], noise, -1)
    mat = np.concatenate([np.stack(cols, axis=1), noise], axis=1).astype(np.int64)
    mat[no_tags] = -1
    mat = np.where(mat < 0, np.iinfo(np.int64).max, mat)
    mat.sort(axis=1)
    dup = np.zeros_like(mat, dtype=bool)
    dup[:, 1:] = mat[:, 1:] == mat[:, :-1]
    valid = (mat != np.iinfo(np.int64).max) & ~dup
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = world.tags.arrow.take(pa.array(mat[valid]))
    user_tags = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), ",")

    # Strings of the record.
    user_idx = pa.array(user)
    nsid = pa.array(us["nsid"].tolist(), pa.string()).take(user_idx)
    farm = rng.integers(1, 10, n)
    server = rng.integers(1, 9999, n)
    secret = _hex(rng.integers(0, 256, (n, 5), dtype=np.uint8), _HEX2)
    secret_orig = _hex(rng.integers(0, 256, (n, 5), dtype=np.uint8), _HEX2)
    pid = _s(photo_id)
    # Videos (marker 1) have Flickr's video page and the original's play URL, ending in
    # secret_original, as real video lines do; photo_hash is the MD5 of whichever URL it is.
    is_video = pa.array(video)
    photo_url = pc.binary_join_element_wise(
        pa.scalar("http://farm"), _s(farm), pa.scalar(".staticflickr.com/"), _s(server), pa.scalar("/"), pid,
        pa.scalar("_"), secret, pa.scalar(".jpg"), "")
    video_page = pc.binary_join_element_wise(pa.scalar("http://www.flickr.com/videos/"), nsid, pa.scalar("/"), pid,
                                             pa.scalar("/"), "")
    video_url = pc.binary_join_element_wise(video_page, pa.scalar("play/orig/"), secret_orig, "")
    download_url = pc.if_else(is_video, video_url, photo_url)
    page_url = pc.if_else(is_video, video_page, pc.binary_join_element_wise(
        pa.scalar("http://www.flickr.com/photos/"), nsid, pa.scalar("/"), pid, pa.scalar("/"), ""))
    m, lens = encode_ascii(np.asarray(download_url.to_numpy(zero_copy_only=False), dtype="S"))
    photo_hash = _hex(md5_many(m, lens), _HEX_UNPADDED)

    lic = rng.choice(len(LICENSES), n, p=[share for _, _, share in LICENSES])
    geo_s = lambda v, d: pc.if_else(pa.array(no_geo), pa.scalar("", pa.string()), _s(np.round(v, d)))
    accuracy = np.where(u[:, 13] < 0.45, 16, rng.integers(11, 16, n))
    date_taken = pc.binary_join_element_wise(
        pc.strftime(pa.array(taken, pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S"), pa.scalar(".0"), "")

    town_name = pa.array(towns["name"].tolist(), pa.string()).take(pa.array(town))
    concept_name = pa.array([c.name for c in CONCEPTS], pa.string()).take(pa.array(concept))
    title_kind = rng.integers(0, 4, n)
    title = pc.choose(pa.array(title_kind, pa.int8()),
                      pc.binary_join_element_wise(pa.scalar("IMG_"), _s(rng.integers(1000, 9999, n)), ""),
                      pc.binary_join_element_wise(pa.scalar("DSC"), _s(rng.integers(10000, 99999, n)), ""),
                      pc.binary_join_element_wise(pc.utf8_capitalize(concept_name), pa.scalar(" in "), town_name, ""),
                      pa.scalar("", pa.string()))
    title = _url_encode(title)
    desc_kind = np.where(u[:, 14] < 0.6, 0, np.where(u[:, 14] < 0.9, 1, 2))
    description = _url_encode(pc.choose(
        pa.array(desc_kind, pa.int8()), pa.scalar("", pa.string()),
        pc.binary_join_element_wise(pa.scalar("Taken in "), town_name, pa.scalar(" & around"), ""),
        pc.binary_join_element_wise(pa.scalar("Day one:\n"), concept_name, pa.scalar(" near "), town_name,
                                    pa.scalar(", \"nice\"\nmore tomorrow"), "")))
    long_rows = u[:, 15] < r.long_description
    if long_rows.any():   # ~200 KB descriptions, as some real lines have
        long_text = quote_plus("A long story about the trip, line after line. "
                               "<a href=\"http://example.org/\">link</a>\n" * 2400, safe="")
        description = pc.replace_with_mask(description, pa.array(long_rows),
                                           pa.array([long_text] * int(long_rows.sum()), pa.string()))
    mt = np.where(u[:, 16] < 0.03, 1, np.where(u[:, 16] < 0.05, 2, 0))
    machine_tags = pc.choose(pa.array(mt, pa.int8()), pa.scalar("", pa.string()),
                             pa.scalar("uploaded%3Aby%3Dinstagram", pa.string()),
                             pc.binary_join_element_wise(pa.scalar("foursquare%3Avenue%3D"), secret, ""))
    device = pa.array([quote_plus(d) for d in DEVICES], pa.string()).take(pa.array(us["device"].to_numpy()[user]))
    dataset = pa.table({
        "line_number": _s(rows), "photo_id": pid, "photo_hash": photo_hash, "user_nsid": nsid,
        "user_nickname": pa.array(us["nickname"].tolist(), pa.string()).take(user_idx), "date_taken": date_taken,
        "date_uploaded": _s(uploaded), "capture_device": device, "title": title, "description": description,
        "user_tags": user_tags, "machine_tags": machine_tags,
        "longitude": geo_s(lon, 6), "latitude": geo_s(lat, 6),
        "accuracy": pc.if_else(pa.array(no_geo), pa.scalar("", pa.string()), _s(accuracy)),
        "page_url": page_url, "download_url": download_url,
        "license_name": pa.array([name for name, _, _ in LICENSES], pa.string()).take(pa.array(lic)),
        "license_url": pa.array([url for _, url, _ in LICENSES], pa.string()).take(pa.array(lic)),
        "server_id": _s(server), "farm_id": _s(farm), "secret": secret, "secret_original": secret_orig,
        "extension": pa.repeat("jpg", n), "marker": _s(video.astype(np.int8)),
    })
    assert dataset.column_names == list(COLUMNS_25)

    # Places value: 0 plain, 1 with a Suburb, 2 with a County, 3 both, 4 no Town; "" when not geotagged.
    variant = (u[:, 17] < 0.15) * 1 + (u[:, 18] < 0.3) * 2
    variant = np.where(no_town, 4, variant)
    pv = world.places_arrow.take(pa.array(town * 5 + variant))
    places = pa.table({"photo_id": pid, "places": pc.if_else(pa.array(no_geo), pa.scalar("", pa.string()), pv)})

    truth = pd.DataFrame({
        "photo_id": photo_id, "town": towns["geonameid"].to_numpy()[town], "town_index": town,
        "continent_code": towns["continent_code"].to_numpy()[town], "concept": concept,
        "tag_language": np.array(LANGUAGES)[np.where(local, lang, 0)], "traveller": travelling,
        "video": video, "no_geo": no_geo, "no_town": no_town, "no_tags": no_tags, "n_tags": counts,
        "landmark": u[:, 20] < r.landmark, "ambient": u[:, 19] < r.ambient, "salience": salience,
        "missing_image": video | (u[:, 21] < r.missing_image),
        "corrupt_image": ~video & (u[:, 22] < r.corrupt_image),
        "image_seed": rng.integers(0, 2**63 - 1, n), "photo_hash": photo_hash.to_numpy(zero_copy_only=False),
    })
    return dataset, places, truth


def _url_encode(arr: pa.Array) -> pa.Array:
    """Form-URL-encode a pyarrow string array: encode each distinct value once (dictionary)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = pc.dictionary_encode(arr)
    values = pa.array([quote_plus(v, safe="") for v in enc.dictionary.to_pylist()], pa.string())
    return values.take(enc.indices)
