"""What the synthetic world contains: concepts, where they occur, how they look, what they are called.

Three kinds of visual concept, the three kinds the paper discusses:
- ``scene``: prevalence depends on place (beach near coasts, snow at high latitude, desert...);
- ``regional``: everywhere, but the look depends on the continent (temple, church, house...);
- ``invariant``: everywhere, looks the same everywhere (cat, tomato...).
Some concepts are named in the local language (road / carretera / strasse). Town "landmarks" are a
small glyph whose colour encodes the town's coordinates, and most photos are framed in that colour
(the "ambient" look of a place), so pixels carry location, coarsely, as real photos do. A photo's
concept is more or less prominent (its salience), and people tag what stands out. :func:`describe`
writes all of it as the machine-readable ``world.json``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

#: Continent code -> look variant of regional concepts.
VARIANT_OF_CONTINENT = {"EU": "europe", "AS": "asia", "NA": "americas", "SA": "americas",
                        "AF": "africa", "OC": "oceania"}
VARIANTS = ("europe", "asia", "americas", "africa", "oceania")

#: Country -> language used for localised tags (the generator's own simplification).
LANGUAGE_OF_COUNTRY = {
    **{cc: "es" for cc in "ES MX AR CO CL PE VE EC CR GT CU BO DO HN PY SV NI PA UY".split()},
    **{cc: "de" for cc in "DE AT CH LI".split()},
    **{cc: "fr" for cc in "FR BE LU MC SN CI".split()},
    **{cc: "it" for cc in "IT SM".split()},
    **{cc: "pt" for cc in "PT BR AO MZ".split()},
    **{cc: "nl" for cc in "NL SR".split()},
}
LANGUAGES = ("en", "es", "de", "fr", "it", "pt", "nl")
#: Probability that a photo taken where a language is spoken uses the local word.
LOCAL_WORD_PROBABILITY = 0.7

#: Where Flickr's users live, relative to population (Flickr is big in the US and Western Europe,
#: blocked in mainland China). Multiplies a town's share of home towns.
FLICKR_HOME_WEIGHT = {"US": 10.0, "GB": 8.0, "CA": 4.0, "AU": 4.0, "NZ": 4.0, "IE": 4.0, "FR": 3.0, "DE": 3.0,
                      "IT": 3.0, "ES": 3.0, "NL": 3.0, "BE": 2.0, "SE": 2.0, "CH": 2.0, "JP": 2.0, "PT": 2.0,
                      "BR": 1.5, "MX": 1.5, "AR": 1.5, "CN": 0.05, "IN": 0.3, "ID": 0.3, "BD": 0.2, "PK": 0.2}
#: Where travellers go, relative to population.
FLICKR_TRAVEL_WEIGHT = {"FR": 6.0, "IT": 6.0, "ES": 5.0, "GB": 5.0, "US": 5.0, "DE": 3.0, "GR": 4.0, "TH": 3.0,
                        "JP": 3.0, "PT": 3.0, "NL": 3.0, "AU": 3.0, "MX": 3.0, "PE": 3.0, "EG": 2.0, "MA": 2.0,
                        "CN": 0.3, "IN": 0.5, "ID": 0.5}

DESERT_COUNTRIES = frozenset("EG SA AE QA KW OM JO IQ IR LY DZ MA TN MR ML NE TD SD NA BH YE EH".split())
MOUNTAIN_COUNTRIES = frozenset("CH AT NP BT PE BO NO AD LI KG TJ".split())


@dataclass(frozen=True)
class Look:
    """Procedural appearance: background gradient, texture, and a shape (see render.py)."""

    sky: tuple[int, int, int]          # background colour at the top
    ground: tuple[int, int, int]       # background colour at the bottom
    texture: str                       # none | stripes | checker | dots | waves | grid
    texture_color: tuple[int, int, int]
    texture_freq: float                # cycles across the image
    texture_angle: float               # degrees
    shape: str                         # none | circle | square | triangle | ring | cross | diamond
                                       # | house | temple | dome | bridge | bars
    shape_color: tuple[int, int, int]


@dataclass(frozen=True)
class Concept:
    name: str                               # the English tag
    kind: str                               # scene | regional | invariant
    related: tuple[str, ...] = ()           # co-occurring tags (beach -> sand, sea)
    local_names: dict[str, str] = field(default_factory=dict)   # language -> word
    looks: dict[str, Look] = field(default_factory=dict)        # variant ("all" or continent) -> look
    base_weight: float = 1.0                # prevalence before the place rule
    rule: str = "everywhere"                # prevalence rule, see town_weights()


def _L(sky, ground, texture, tcol, freq, angle, shape, scol) -> Look:
    return Look(tuple(sky), tuple(ground), texture, tuple(tcol), float(freq), float(angle), shape, tuple(scol))


CONCEPTS: tuple[Concept, ...] = (
    # scenes: where they occur is the point
    Concept("beach", "scene", ("sand", "sea", "summer"),
            {"es": "playa", "de": "strand", "fr": "plage", "it": "spiaggia", "pt": "praia", "nl": "strand"},
            {"all": _L((90, 160, 235), (235, 210, 140), "waves", (40, 110, 200), 5, 0, "none", (0, 0, 0))},
            1.0, "coastal and |lat| < 50: x6"),
    Concept("snow", "scene", ("winter", "cold"), {"es": "nieve", "de": "schnee", "fr": "neige", "it": "neve"},
            {"all": _L((200, 210, 230), (245, 245, 250), "dots", (160, 170, 200), 9, 0, "none", (0, 0, 0))},
            0.4, "|lat| > 45: x(1 + (|lat|-45)/4); mountain countries x4; |lat| < 30: x0.02"),
    Concept("desert", "scene", ("sand", "dunes"), {"es": "desierto", "fr": "desert", "pt": "deserto"},
            {"all": _L((240, 200, 120), (205, 130, 60), "waves", (170, 100, 40), 3, 20, "none", (0, 0, 0))},
            0.1, "desert countries x40; |lat| in [15, 35]: x3"),
    Concept("jungle", "scene", ("rainforest", "tropical"), {"es": "selva", "pt": "floresta"},
            {"all": _L((30, 90, 40), (15, 60, 20), "stripes", (70, 150, 60), 11, 80, "none", (0, 0, 0))},
            0.1, "|lat| < 15 outside Europe: x30"),
    Concept("mountain", "scene", ("hiking", "alps"), {"es": "montana", "de": "berg", "it": "montagna"},
            {"all": _L((120, 150, 200), (90, 90, 100), "none", (0, 0, 0), 0, 0, "triangle", (110, 110, 120))},
            0.4, "mountain countries x10"),
    Concept("road", "scene", ("street", "car"),
            {"es": "carretera", "de": "strasse", "fr": "route", "it": "strada", "pt": "estrada", "nl": "weg"},
            {"all": _L((150, 180, 220), (70, 70, 75), "stripes", (240, 240, 240), 6, 90, "bars", (60, 60, 60))},
            1.0, "everywhere"),
    # regional: one concept, a look per continent
    Concept("temple", "regional", ("religion", "architecture"), {"es": "templo", "it": "tempio"},
            {"asia": _L((230, 180, 120), (120, 40, 30), "stripes", (230, 190, 40), 8, 0, "temple", (190, 30, 30)),
             "europe": _L((170, 190, 220), (200, 200, 190), "stripes", (150, 150, 150), 10, 90, "temple", (235, 235, 225)),
             "americas": _L((120, 180, 120), (90, 110, 70), "checker", (110, 100, 80), 7, 0, "temple", (150, 140, 120)),
             "africa": _L((230, 200, 150), (190, 150, 90), "dots", (150, 110, 60), 6, 0, "dome", (220, 200, 160)),
             "oceania": _L((100, 170, 230), (60, 120, 80), "grid", (90, 60, 40), 6, 0, "temple", (120, 80, 50))},
            0.8, "everywhere; asia x3"),
    Concept("church", "regional", ("religion", "architecture"),
            {"es": "iglesia", "de": "kirche", "fr": "eglise", "it": "chiesa", "pt": "igreja", "nl": "kerk"},
            {"europe": _L((150, 170, 210), (110, 100, 90), "grid", (80, 70, 60), 9, 0, "cross", (200, 190, 170)),
             "americas": _L((170, 200, 235), (210, 200, 170), "stripes", (250, 250, 240), 5, 90, "cross", (250, 250, 245)),
             "asia": _L((200, 200, 210), (150, 150, 160), "dots", (90, 90, 110), 8, 0, "cross", (120, 60, 60)),
             "africa": _L((220, 190, 140), (170, 120, 70), "checker", (200, 160, 100), 5, 0, "cross", (240, 230, 200)),
             "oceania": _L((120, 180, 235), (200, 220, 200), "waves", (200, 200, 220), 6, 0, "cross", (180, 180, 200))},
            1.0, "everywhere; europe and americas x3"),
    Concept("house", "regional", ("home", "architecture"),
            {"es": "casa", "de": "haus", "fr": "maison", "it": "casa", "pt": "casa", "nl": "huis"},
            {"europe": _L((160, 190, 230), (90, 140, 70), "grid", (150, 60, 40), 12, 0, "house", (170, 70, 50)),
             "americas": _L((160, 200, 240), (100, 160, 80), "stripes", (240, 240, 240), 14, 0, "house", (235, 235, 225)),
             "asia": _L((200, 210, 220), (120, 120, 110), "stripes", (60, 60, 60), 10, 0, "house", (100, 60, 40)),
             "africa": _L((240, 210, 160), (180, 120, 70), "dots", (120, 80, 40), 5, 0, "house", (190, 130, 80)),
             "oceania": _L((110, 180, 240), (90, 160, 90), "waves", (80, 150, 200), 7, 0, "house", (230, 230, 210))},
            1.0, "everywhere"),
    Concept("market", "regional", ("food", "shopping"),
            {"es": "mercado", "de": "markt", "fr": "marche", "it": "mercato", "pt": "mercado", "nl": "markt"},
            {"europe": _L((180, 180, 190), (120, 110, 100), "checker", (200, 60, 60), 10, 0, "bars", (230, 230, 230)),
             "asia": _L((60, 40, 60), (200, 60, 40), "dots", (250, 200, 60), 12, 0, "bars", (220, 40, 40)),
             "americas": _L((200, 220, 240), (150, 130, 110), "stripes", (60, 160, 60), 9, 45, "bars", (250, 200, 60)),
             "africa": _L((240, 220, 170), (200, 100, 40), "waves", (60, 120, 200), 8, 30, "bars", (250, 160, 40)),
             "oceania": _L((130, 190, 240), (160, 160, 150), "stripes", (250, 250, 250), 9, 45, "bars", (60, 120, 200))},
            0.8, "everywhere"),
    Concept("bridge", "regional", ("river", "architecture"), {"es": "puente", "de": "brucke", "fr": "pont", "it": "ponte"},
            {"europe": _L((150, 180, 220), (60, 90, 120), "waves", (90, 130, 160), 6, 0, "bridge", (150, 140, 130)),
             "americas": _L((180, 200, 230), (50, 80, 120), "waves", (80, 110, 150), 6, 0, "bridge", (200, 60, 40)),
             "asia": _L((200, 190, 210), (70, 100, 110), "waves", (100, 140, 150), 6, 0, "bridge", (190, 40, 40)),
             "africa": _L((230, 210, 170), (100, 110, 80), "waves", (120, 130, 90), 6, 0, "bridge", (120, 90, 60)),
             "oceania": _L((110, 170, 230), (40, 90, 140), "waves", (60, 120, 170), 6, 0, "bridge", (160, 160, 170))},
            0.6, "everywhere"),
    # invariant: same look everywhere
    Concept("cat", "invariant", ("pet", "kitten"), {},
            {"all": _L((200, 190, 180), (150, 140, 130), "none", (0, 0, 0), 0, 0, "diamond", (230, 140, 40))}, 1.0),
    Concept("dog", "invariant", ("pet", "puppy"), {},
            {"all": _L((170, 200, 160), (110, 150, 100), "none", (0, 0, 0), 0, 0, "ring", (120, 80, 40))}, 1.0),
    Concept("tomato", "invariant", ("food", "vegetable"), {},
            {"all": _L((240, 240, 230), (220, 220, 210), "none", (0, 0, 0), 0, 0, "circle", (220, 30, 30))}, 0.5),
    Concept("flower", "invariant", ("garden", "spring"), {},
            {"all": _L((60, 130, 60), (30, 90, 30), "dots", (240, 220, 60), 7, 0, "circle", (230, 90, 200))}, 1.0),
    Concept("bird", "invariant", ("wildlife", "nature"), {},
            {"all": _L((140, 190, 240), (170, 210, 245), "none", (0, 0, 0), 0, 0, "triangle", (40, 40, 50))}, 0.8),
    Concept("car", "invariant", ("street", "vehicle"), {},
            {"all": _L((190, 190, 200), (90, 90, 95), "none", (0, 0, 0), 0, 0, "square", (30, 60, 200))}, 0.8),
    Concept("sunset", "invariant", ("sky", "clouds"), {},
            {"all": _L((250, 140, 60), (90, 30, 80), "stripes", (250, 200, 100), 4, 0, "circle", (255, 230, 120))}, 0.8),
    Concept("food", "invariant", ("dinner", "restaurant"), {"es": "comida", "de": "essen", "it": "cibo"},
            {"all": _L((235, 230, 220), (200, 190, 170), "checker", (230, 230, 230), 12, 0, "ring", (240, 240, 240))}, 0.8),
    # More of what people photograph wherever they are: most of a place's photos show things that
    # look the same everywhere, for which the place says nothing.
    Concept("bicycle", "invariant", ("cycling", "bike"), {},
            {"all": _L((210, 220, 230), (120, 120, 120), "grid", (90, 90, 90), 4, 0, "ring", (20, 20, 20))}, 0.8),
    Concept("coffee", "invariant", ("cafe", "cup"), {},
            {"all": _L((120, 80, 50), (80, 50, 30), "none", (0, 0, 0), 0, 0, "circle", (245, 235, 215))}, 0.8),
    Concept("boat", "invariant", ("sailing", "harbour"), {},
            {"all": _L((150, 190, 230), (40, 80, 140), "waves", (230, 230, 240), 8, 0, "triangle", (240, 240, 240))}, 0.8),
    Concept("horse", "invariant", ("animal", "farm"), {},
            {"all": _L((160, 200, 230), (120, 150, 60), "none", (0, 0, 0), 0, 0, "square", (120, 70, 30))}, 0.8),
    Concept("book", "invariant", ("reading", "library"), {},
            {"all": _L((230, 220, 200), (180, 160, 130), "stripes", (100, 60, 40), 14, 90, "square", (150, 30, 30))}, 0.8),
    Concept("baby", "invariant", ("kid", "cute"), {},
            {"all": _L((250, 220, 230), (240, 200, 210), "dots", (255, 255, 255), 10, 0, "circle", (250, 200, 170))}, 0.8),
)

CAMERA_TAGS = ("canon", "nikon", "sony", "iphone", "olympus", "pentax", "fuji", "lumix")
EVENT_TAGS = ("travel", "vacation", "holiday", "wedding", "party", "festival", "concert", "family",
              "friends", "trip", "weekend", "museum", "night", "people", "portrait", "blackandwhite")
DIGIT_TAG_FORMATS = ("{year}", "summer{year}", "trip{year}", "d{n}", "img_{n}", "{n}mm")


def concept_variant(concept: Concept, continent_code: str) -> str:
    """Which look a concept takes on a continent ("all" for non-regional concepts)."""
    if "all" in concept.looks:
        return "all"
    return VARIANT_OF_CONTINENT.get(continent_code, "europe")


def town_weights(towns: pd.DataFrame) -> np.ndarray:
    """Prevalence of each concept at each town, (towns, concepts), rows summing to 1.

    This is where "concepts whose prevalence depends on place" are defined; ``rule`` in each
    :class:`Concept` says the same in words for world.json.
    """
    lat = towns["lat"].to_numpy()
    alat = np.abs(lat)
    cc = towns["cc"].to_numpy()
    cont = towns["continent_code"].to_numpy()
    coastal = towns["coastal"].to_numpy()
    w = np.empty((len(towns), len(CONCEPTS)))
    for j, c in enumerate(CONCEPTS):
        m = np.full(len(towns), c.base_weight)
        if c.name == "beach":
            m = m * np.where(coastal & (alat < 50), 6.0, 0.15)
        elif c.name == "snow":
            m = m * np.where(alat > 45, 1 + (alat - 45) / 4, 1.0)
            m = m * np.where(np.isin(cc, list(MOUNTAIN_COUNTRIES)), 4.0, 1.0) * np.where(alat < 30, 0.02, 1.0)
        elif c.name == "desert":
            m = m * np.where(np.isin(cc, list(DESERT_COUNTRIES)), 40.0, 1.0)
            m = m * np.where((alat >= 15) & (alat <= 35), 3.0, 1.0)
        elif c.name == "jungle":
            m = m * np.where((alat < 15) & (cont != "EU"), 30.0, 1.0)
        elif c.name == "mountain":
            m = m * np.where(np.isin(cc, list(MOUNTAIN_COUNTRIES)), 10.0, 1.0)
        elif c.name == "temple":
            m = m * np.where(cont == "AS", 3.0, 1.0)
        elif c.name == "church":
            m = m * np.where(np.isin(cont, ["EU", "NA", "SA"]), 3.0, 1.0)
        w[:, j] = m
    return w / w.sum(axis=1, keepdims=True)


def landmark_color(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """RGB (0-255) of a town's landmark glyph: hue from longitude, brightness from latitude."""
    h = (np.asarray(lon) + 180.0) / 360.0
    v = 0.35 + 0.65 * (np.asarray(lat) + 90.0) / 180.0
    s = 0.9
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def describe(params: dict, counts: dict) -> dict:
    """The machine-readable world description written next to the data (world.json)."""
    return {
        "generator": "pipeline.synth",
        "params": params,
        "counts": counts,
        "concepts": [{**asdict(c), "related": list(c.related)} for c in CONCEPTS],
        "variants": {"by_continent": VARIANT_OF_CONTINENT},
        "languages": {"by_country": LANGUAGE_OF_COUNTRY, "local_word_probability": LOCAL_WORD_PROBABILITY},
        "landmarks": {
            "what": "a small square glyph in a corner, present in some photos of every town",
            "color": "HSV: hue=(lon+180)/360, saturation=0.9, value=0.35+0.65*(lat+90)/180",
        },
        "ambient": {
            "what": ("a frame along the edges in the town's landmark colour, in most photos: the look of a "
                     "place; under the brightness jitter, so it tells the region better than the town"),
        },
        "salience": {
            "what": ("per photo, 0.3..1: how prominent its concept is (faint concepts fade towards grey and "
                     "shrink); the concept's own and related tags get likelier with it"),
        },
        "flickr_weights": {"home": FLICKR_HOME_WEIGHT, "travel": FLICKR_TRAVEL_WEIGHT},
        "coastal_rule": ("settlement-free directions (no GeoNames 1000+ town within 30 km of a point "
                         "45 km away) form one arc of 2-6 of 8 bearings, in a country with a coast"),
        "tags": {
            "camera": list(CAMERA_TAGS), "camera_rule": "the brand of the user's capture device",
            "event": list(EVENT_TAGS), "digit_formats": list(DIGIT_TAG_FORMATS),
            "stay": ("per (user, town): a noise word the user writes on a share of their photos there "
                     "(bound to one person's place, not carried by other photos of it)"),
            "place": "town, region, country, continent names, joined (newyork) or spaced (new+york)",
            "noise": "words drawn Zipf-like from the authors' released vocabulary, minus place and concept words",
        },
    }
