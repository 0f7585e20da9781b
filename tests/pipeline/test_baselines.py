"""Frequency baselines against a brute-force Python reference on a small random dataset."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline import baselines

pytestmark = pytest.mark.spark

V, K = 30, (1, 3, 5)
PLACES = {0, 1, 2}


def _dataset(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(400):
        town, country = f"t{rng.integers(6)}", None
        country = "A" if town in ("t0", "t1", "t2") else "B"
        if pid % 97 == 5:
            town = "lonely"                         # a town seen only in test: falls back to country
        # tags skewed per town, place tags 0-2 frequent
        base = int(town[1]) if town != "lonely" else 5
        tags = set(rng.choice(V, size=rng.integers(1, 5), p=_p(base)).tolist())
        split = "test" if pid % 4 == 0 else "train"
        if town == "lonely":
            split = "test"
        rows.append((pid, sorted(tags), town, None, country, split))
    return rows


def _p(base: int) -> np.ndarray:
    w = np.ones(V)
    w[list(PLACES)] += 4
    w[(3 + base * 4):(3 + base * 4 + 4)] += 6
    return w / w.sum()


def _reference(rows, exclude: set[int]):
    train = [r for r in rows if r[5] == "train"]
    test = [r for r in rows if r[5] == "test"]

    def ranked(group):
        c = Counter(t for r in group for t in r[1] if t not in exclude)
        return [t for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))][:max(K)]

    glob = ranked(train)
    country = {c: ranked([r for r in train if r[4] == c]) for c in {r[4] for r in train}}
    town = {t: ranked([r for r in train if r[2] == t]) for t in {r[2] for r in train}}
    out = {}
    for level in baselines.LEVELS:
        for k in K:
            hits = n = 0
            for r in test:
                truth = set(r[1]) - exclude
                if not truth:
                    continue
                pred = {"global": glob, "country": country.get(r[4], glob),
                        "town": town.get(r[2], country.get(r[4], glob))}[level]
                n += 1
                hits += bool(truth & set(pred[:k]))
            out[(level, k)] = 100.0 * hits / n
    return out


def test_baselines_match_brute_force(spark):
    rows = _dataset()
    df = spark.createDataFrame(rows, "photo_id long, tag_ids array<int>, town string, region string, "
                                     "country string, split string")
    place_ids = spark.createDataFrame([(i,) for i in sorted(PLACES)], "index int")
    preds = baselines.with_predictions(df.where("split = 'test'"), df.where("split = 'train'"), max(K),
                                       place_ids, fallback=True)
    got = {(r["level"], r["variant"], r["k"]): r["accuracy"]
           for r in baselines.evaluate(preds.repartition(3), sorted(PLACES), K)}
    for variant, exclude in (("all", set()), ("no_places", PLACES)):
        ref = _reference(rows, exclude)
        for (level, k), value in ref.items():
            assert got[(level, variant, k)] == pytest.approx(value), (level, variant, k)
    assert got[("town", "all", 1)] > got[("global", "all", 1)]


def test_unscored_images_match_brute_force(spark):
    rows = _dataset(1) + [(1000, [], "t0", None, "A", "test"), (1001, [0, 2], "t1", None, "A", "test")]
    df = spark.createDataFrame(rows, "photo_id long, tag_ids array<int>, town string, region string, "
                                     "country string, split string")
    place_ids = spark.createDataFrame([(i,) for i in sorted(PLACES)], "index int")
    got = baselines.unscored_images(df.where("split = 'test'"), place_ids)
    test = [r for r in rows if r[5] == "test"]
    assert got == {"all": sum(not r[1] for r in test), "no_places": sum(set(r[1]) <= PLACES for r in test)}
    assert got["all"] == 1 and got["no_places"] > 1


@pytest.mark.slow
def test_baselines_job_checks_every_test_image_before_publishing(spark, tmp_path):
    """Every test image is scored or has no tag left to score; a failed check publishes nothing."""
    from helpers.spark_jobs import digests, job_config, leftovers, output_path, refuse
    from helpers.yfcc import TOWNS, at, write_raw

    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata
    from jobs.frequency_baselines import main as frequency_baselines
    from pipeline.config import PipelineError

    towns = ["nyc", "galway", "paris"]
    lines = [at(towns[i % 3], i, tags="paris" if i % 10 == 0 else f"cat,{towns[i % 3]},t{chr(97 + i % 4)}x")
             for i in range(1, 121)]
    raw = write_raw(tmp_path / "raw", lines, {i: TOWNS[towns[i % 3]] for i in range(1, 121)})
    cfg = job_config(tmp_path, raw, "vocab.drop_top=0", "splits.test=0.4", "splits.val=0.1")
    clean_metadata(cfg)
    build_vocab(cfg)
    frequency_baselines(cfg)
    out = Path(cfg.outputs.baselines)
    assert {p.name for p in output_path(out).iterdir()} == {"baselines.md", "baselines.json"}
    before = digests(out)
    with pytest.raises(PipelineError, match="frequency_baselines .*: refused"):
        frequency_baselines(job_config(tmp_path, raw, "baselines.k=[1,2]"), check=refuse)
    assert digests(out) == before
    assert leftovers(out.parent) == []
