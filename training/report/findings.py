"""The paper's findings (docs/evaluation.md, "The pattern to reproduce"), each judged on our results:
holds or fails, with its numbers and in how many seeds it holds.

A finding compares rows seed by seed: a LocSens model trained on the MCC of its seed's chain
against that MCC, a sigma = 0 snapshot against the sigma = 1 snapshot of the same run. The
frequency baselines have no seed; they stand in every comparison as they are. A finding holds when
it holds in every seed compared; a row it needs that was not run makes it "not measured".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from common.metrics import NOPLACES, accuracy_metric_name, location_metric_name
from training.report.results import BASELINES, Row, Tables

A1, A10, A50 = (accuracy_metric_name(k) for k in (1, 10, 50))
NP = {k: accuracy_metric_name(k, NOPLACES) for k in (1, 10, 50)}
AGNOSTIC = location_metric_name("agnostic")
FINE = [location_metric_name(g) for g in ("2500km", "750km", "200km", "25km", "1km")]
#: A seed's values of the rows a finding reads: row key -> metric -> value.
Values = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class Finding:
    pattern: str
    #: True: holds in every seed compared; False: fails in at least one; None: a row it needs is missing.
    holds: Optional[bool]
    held: int = 0
    seeds: int = 0
    numbers: str = ""

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "holds": self.holds, "held": self.held, "seeds": self.seeds,
                "numbers": self.numbers}


def _seeds(rows: Sequence[Row]) -> list[str]:
    """The seeds every seeded row of ``rows`` has (one pseudo-seed when none is seeded)."""
    seeded = [set(r.by_seed) for r in rows if r.by_seed]
    if not seeded:
        return ["-"]
    return sorted(set.intersection(*seeded))


def _at(row: Row, seed: str) -> Mapping[str, float]:
    return row.by_seed.get(seed, row.mean) if row.by_seed else row.mean


def judge(pattern: str, needed: Mapping[str, Optional[Row]], test: Callable[[Values], bool],
          numbers: Callable[[Values], str]) -> Finding:
    """``test`` on each seed's values of the ``needed`` rows; ``numbers`` on their means."""
    missing = [k for k, r in needed.items() if r is None]
    if missing:
        return Finding(pattern, None, numbers=f"not measured: no {', '.join(missing)} row")
    rows = {k: r for k, r in needed.items() if r is not None}
    seeds = _seeds(list(rows.values()))
    if not seeds:
        return Finding(pattern, None, numbers="not measured: its rows share no seed")
    held = 0
    for seed in seeds:
        try:
            held += bool(test({k: _at(r, seed) for k, r in rows.items()}))
        except KeyError:                    # a metric the seed's run did not log: not a hold
            pass
    means = {k: r.mean for k, r in rows.items()}
    try:
        said = numbers(means)
    except KeyError as exc:
        said = f"(no {exc.args[0]})"
    return Finding(pattern, held == len(seeds), held, len(seeds), said)


def _km(metric: str) -> str:
    """'retrieval/P@10_2500km' -> '2500 km'."""
    return metric.rsplit("_", 1)[1].replace("km", " km")


def _sigma_rows(results: Mapping[str, Row]) -> tuple[Optional[Row], Optional[Row]]:
    """The rows of the largest and the smallest sigma snapshot."""
    snapshots = sorted((r for r in results.values() if r.sigma is not None), key=lambda r: r.sigma)
    return (snapshots[-1], snapshots[0]) if len(snapshots) > 1 else (None, None)


def findings(tables: Tables) -> list[Finding]:
    t, r = tables.tagging, tables.retrieval
    f = "{:.2f}".format
    # The paper's reference is LocSens with zeroed locations; a demo without it (DEMO=full has it)
    # compares with MCC, the location-agnostic model LocSens reads, which the paper's table also beats.
    reference_name, reference = (("zeroed locations", r["locsens_zeroed"]) if "locsens_zeroed" in r
                                 else ("MCC, location-agnostic", r.get("mcc")))
    out = [
        judge("LocSens beats MCC in tagging (A@1, A@10, with and without place names)",
              {"LocSens raw (tagging)": t.get("locsens_raw"), "MCC": t.get("mcc")},
              lambda v: all(v["LocSens raw (tagging)"][m] > v["MCC"][m] for m in (A1, A10, NP[1], NP[10])),
              lambda v: "; ".join(f"{label} {f(v['LocSens raw (tagging)'][m])} against {f(v['MCC'][m])}"
                                  for label, m in (("A@1", A1), ("A@10", A10), ("A@1 without place names", NP[1]),
                                                   ("A@10 without place names", NP[10])))),
        judge("LocSens beats MCC in retrieval at every distance granularity",
              {"LocSens raw (retrieval)": r.get("locsens_raw"), "MCC": r.get("mcc")},
              lambda v: all(v["LocSens raw (retrieval)"][m] > v["MCC"][m] for m in FINE),
              lambda v: ", ".join(f"{_km(m)} {f(v['LocSens raw (retrieval)'][m])} against {f(v['MCC'][m])}"
                                  for m in FINE)),
        judge(f"Raw locations trade agnostic precision for locality (against {reference_name})",
              {"raw": r.get("locsens_raw"), "zeroed": reference},
              lambda v: (v["raw"][AGNOSTIC] < v["zeroed"][AGNOSTIC]
                         and all(v["raw"][m] > v["zeroed"][m] for m in (FINE[0], FINE[3]))),
              lambda v: (f"agnostic {f(v['raw'][AGNOSTIC])} against {f(v['zeroed'][AGNOSTIC])}; 2500 km "
                         f"{f(v['raw'][FINE[0]])} against {f(v['zeroed'][FINE[0]])}; 25 km {f(v['raw'][FINE[3]])} "
                         f"against {f(v['zeroed'][FINE[3]])}")),
    ]
    high, low = _sigma_rows(r)
    out.append(judge(
        "Lower sigma trades the same way (the smallest sigma's snapshot against the largest's)",
        {"sigma high": high, "sigma low": low},
        lambda v: (v["sigma low"][AGNOSTIC] < v["sigma high"][AGNOSTIC]
                   and all(v["sigma low"][m] > v["sigma high"][m] for m in (FINE[0], FINE[3]))),
        lambda v: (f"sigma={high.sigma:g} -> {low.sigma:g}: agnostic {f(v['sigma high'][AGNOSTIC])} -> "
                   f"{f(v['sigma low'][AGNOSTIC])}; 2500 km {f(v['sigma high'][FINE[0]])} -> "
                   f"{f(v['sigma low'][FINE[0]])}; 25 km {f(v['sigma high'][FINE[3]])} -> "
                   f"{f(v['sigma low'][FINE[3]])}")))
    out.append(judge(
        "Town frequency wins A@1 but not A@50",
        {"town": t.get("town_frequency"), "LocSens": t.get("locsens_raw"), "MCC": t.get("mcc")},
        lambda v: v["town"][A1] > max(v["LocSens"][A1], v["MCC"][A1]) and v["LocSens"][A50] > v["town"][A50],
        lambda v: (f"A@1 town {f(v['town'][A1])}, LocSens {f(v['LocSens'][A1])}, MCC {f(v['MCC'][A1])}; A@50 "
                   f"town {f(v['town'][A50])}, LocSens {f(v['LocSens'][A50])}")))
    others = {"MCC": t.get("mcc"), **{label: t.get(key) for key, label in BASELINES.items()}}
    out.append(judge(
        "Without place names, LocSens wins everything (tagging A@1, A@10, A@50)",
        {"LocSens": t.get("locsens_raw"), **others},
        lambda v: all(v["LocSens"][NP[k]] > max(v[o][NP[k]] for o in others) for k in (1, 10, 50)),
        lambda v: "; ".join(f"A@{k} LocSens {f(v['LocSens'][NP[k]])}, best other "
                            f"{max(others, key=lambda o: v[o][NP[k]])} {f(max(v[o][NP[k]] for o in others))}"
                            for k in (1, 10, 50))))
    return out


def findings_section(found: Sequence[Finding]) -> str:
    """The report's Findings: one line per pattern, holds / fails, in how many seeds, its numbers."""
    lines = []
    for x in found:
        if x.holds is None:
            lines.append(f"- **not measured**: {x.pattern}. {x.numbers}.")
            continue
        verdict = "holds" if x.holds else "fails"
        seeds = f"held in {x.held} of {x.seeds} seeds" if x.seeds > 1 else "one seed"
        lines.append(f"- **{verdict}** ({seeds}): {x.pattern}. Means: {x.numbers}.")
    return "\n".join(lines)
