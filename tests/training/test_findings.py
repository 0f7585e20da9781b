"""The report's Findings: each pattern judged seed by seed on the rows it compares."""
from __future__ import annotations

from training.report.findings import findings, findings_section
from training.report.results import Tables, baseline_results, family_row

DIST = ("agnostic", "2500km", "750km", "200km", "25km", "1km")


def _tagging(a1: float, a10: float, a50: float, np1: float, np10: float, np50: float) -> dict[str, float]:
    return {"tagging/A@1": a1, "tagging/A@10": a10, "tagging/A@50": a50, "tagging/A@1_noplaces": np1,
            "tagging/A@10_noplaces": np10, "tagging/A@50_noplaces": np50}


def _retrieval(*p10: float) -> dict[str, float]:
    return {f"retrieval/P@10_{g}": v for g, v in zip(DIST, p10)}


def _row(family, variant, sigma, by_seed):
    return family_row(family, variant, sigma, list(by_seed.values()), list(by_seed))


def test_a_finding_holds_only_when_it_holds_in_every_seed():
    mcc = {"1": {**_tagging(30, 60, 80, 25, 55, 75), **_retrieval(20, 6, 3, 2, 1, 0.5)},
           "2": {**_tagging(36, 66, 82, 31, 60, 77), **_retrieval(21, 7, 3, 2, 1, 0.5)}}
    raw = {"1": _tagging(32, 64, 86, 27, 58, 78), "2": _tagging(35, 68, 88, 33, 62, 79)}   # seed 2: A@1 below
    raw_r = {s: _retrieval(18, 11, 6, 3, 2.5, 1.2) for s in ("1", "2")}
    zeroed_r = {s: _retrieval(21, 7, 3, 2, 1.1, 0.5) for s in ("1", "2")}
    sigma1 = {s: _retrieval(20, 8, 4, 2, 1.5, 0.6) for s in ("1", "2")}
    sigma0 = {s: _retrieval(17, 11, 5, 3, 2.4, 1.2) for s in ("1", "2")}
    tables = Tables()
    tables.tagging.update([_row("mcc", None, None, mcc), _row("locsens", "raw", None, raw)])
    tables.tagging.update(baseline_results({"baselines/town/A_at_1": 50.0, "baselines/town/A_at_50": 84.0,
                                            "baselines/town/A_at_1_noplaces": 26.0,
                                            "baselines/town/A_at_10_noplaces": 55.0,
                                            "baselines/town/A_at_50_noplaces": 70.0}))
    tables.retrieval.update([_row("mcc", None, None, mcc), _row("locsens", "raw", None, raw_r),
                             _row("locsens", "zeroed", None, zeroed_r), _row("locsens", "sampling", 1.0, sigma1),
                             _row("locsens", "sampling", 0.0, sigma0)])
    got = {f.pattern.split(" (")[0]: f for f in findings(tables)}
    tagging = got["LocSens beats MCC in tagging"]
    assert (tagging.holds, tagging.held, tagging.seeds) == (False, 1, 2)
    assert "A@1 33.50 against 33.00" in tagging.numbers
    assert got["LocSens beats MCC in retrieval at every distance granularity"].holds is True
    assert got["Raw locations trade agnostic precision for locality"].holds is True
    sigma = got["Lower sigma trades the same way"]
    assert sigma.holds is True and "sigma=1 -> 0: agnostic 20.00 -> 17.00" in sigma.numbers
    assert got["Town frequency wins A@1 but not A@50"].holds is True          # 50 > 33.5; 87 > 84
    # Without place names: global and country frequency were not run, so it cannot be judged.
    assert got["Without place names, LocSens wins everything"].holds is None
    section = findings_section(findings(tables))
    assert "- **fails** (held in 1 of 2 seeds): LocSens beats MCC in tagging" in section
    assert "**not measured**" in section and "no Global frequency, Country frequency row" in section
    # Without the zeroed-location model, raw locations are compared with MCC, location-agnostic.
    del tables.retrieval["locsens_zeroed"]
    trade = next(f for f in findings(tables) if f.pattern.startswith("Raw locations"))
    assert "(against MCC, location-agnostic)" in trade.pattern
    assert trade.holds is True and trade.numbers.startswith("agnostic 18.00 against 20.50")


def test_one_run_per_row_is_said_so():
    tables = Tables()
    tables.tagging.update([family_row("mcc", None, None, [_tagging(30, 60, 80, 25, 55, 75)]),
                           family_row("locsens", "raw", None, [_tagging(31, 61, 81, 26, 56, 76)])])
    line = findings_section(findings(tables)).splitlines()[0]
    assert line.startswith("- **holds** (one seed): LocSens beats MCC in tagging")


def test_rows_without_a_common_seed_are_not_judged():
    tables = Tables()
    tables.tagging.update([_row("mcc", None, None, {"1": _tagging(30, 60, 80, 25, 55, 75)}),
                           _row("locsens", "raw", None, {"2": _tagging(31, 61, 81, 26, 56, 76)})])
    tagging = findings(tables)[0]
    assert tagging.holds is None and tagging.numbers == "not measured: its rows share no seed"
