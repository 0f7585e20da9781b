"""The paper's numbers on full YFCC100M (docs/evaluation.md), by report row (``Family.row_key``:
``mcc``, ``locsens_raw``; the frequency baselines' ``<level>_frequency``; ``upper_bound``), printed
beside ours in every table cell. None: the paper does not report the cell.
"""
from __future__ import annotations

#: Tagging: A@1, A@10, A@50, %pred, %cpred.
PAPER_TAGGING = {
    "global_frequency": (1.82, 13.45, None, None, None), "country_frequency": (28.05, 46.63, 63.14, None, None),
    "town_frequency": (51.41, 65.49, 71.05, None, None), "mlc": (8.86, 30.59, None, None, None),
    "mcc": (20.32, 47.64, 68.05, 29.11, 15.15), "her": (15.83, 31.24, None, None, None),
    "locsens_zeroed": (15.92, 46.60, None, None, None), "locsens_raw": (28.10, 68.21, 85.85, 44.00, 24.04),
}
#: Tagging with place names omitted (supplement Table 2): A@1, A@10, A@50.
PAPER_NOPLACES = {
    "country_frequency": (3.80, 17.21, 41.60), "town_frequency": (16.97, 34.95, 47.53),
    "mcc": (15.15, 36.75, 51.80), "locsens_raw": (17.34, 44.45, 61.10),
}
#: Location-agnostic retrieval: P@10.
PAPER_AGNOSTIC = {"mlc": 1.01, "mcc": 14.07, "her": 7.02}
#: Location-sensitive P@10: agnostic, 2500, 750, 200, 25, 1 km.
PAPER_LOCATION = {
    "upper_bound": (100, 96.08, 90.51, 80.31, 64.52, 42.46), "mcc": (42.18, 29.23, 24.20, 18.34, 13.25, 4.66),
    "her": (37.36, 25.03, 20.27, 15.51, 11.23, 3.65), "mlc": (5.28, 2.54, 1.65, 1.00, 0.62, 0.17),
    "locsens_zeroed": (40.05, 28.32, 24.34, 18.44, 12.79, 3.74), "locsens_raw": (32.74, 28.42, 25.52, 21.83, 15.53, 4.83),
    "locsens_dropout": (36.95, 30.42, 26.14, 20.46, 14.28, 4.64),
}
#: The paper's location-sampling model at each sigma it reports, same columns.
PAPER_SIGMA = {
    1.0: (40.60, 28.40, 23.84, 18.16, 13.04, 4.13), 0.1: (40.03, 29.30, 24.36, 18.83, 13.46, 4.22),
    0.05: (39.80, 31.25, 25.76, 19.58, 13.78, 4.30), 0.01: (37.05, 31.27, 26.65, 20.14, 14.15, 4.44),
    0.0: (35.95, 30.61, 27.00, 21.39, 14.75, 4.83),
}
