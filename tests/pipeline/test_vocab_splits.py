"""build_vocab transforms on tiny DataFrames, split determinism, place names, and the job."""
from __future__ import annotations

import json

import pytest
from helpers.spark_jobs import digests, job_config, leftovers, output_path, refuse
from helpers.yfcc import TOWNS, at, write_raw

from pipeline import parse, place_names, splits, vocab
from pipeline.config import PipelineError

pytestmark = pytest.mark.spark


def test_vocabulary_drops_head_and_breaks_ties_by_tag(spark):
    clean = spark.createDataFrame(
        [(1, ["a", "b", "c", "d"]), (2, ["a", "b", "d", "e"]), (3, ["a", "c", "z"]), (4, ["a"])],
        "photo_id long, tags array<string>")
    voc, dropped = vocab.select_vocabulary(vocab.tag_counts(clean), drop_top=1, size=3)
    assert [tuple(r) for r in dropped.orderBy("rank").collect()] == [(0, "a", 4)]
    assert [tuple(r) for r in voc.orderBy("index").collect()] == [(0, "b", 2), (1, "c", 2), (2, "d", 2)]


def test_apply_vocabulary_keeps_order_and_rejects(spark):
    clean = spark.createDataFrame(
        [(1, ["x", "c", "b"]), (2, ["x"]), (3, ["b", "c", "d"]), (4, [])],
        "photo_id long, tags array<string>")
    voc = spark.createDataFrame([(0, "b", 5), (1, "c", 4), (2, "d", 3)], "index int, tag string, count long")
    rows = {r["photo_id"]: r for r in vocab.apply_vocabulary(clean, voc, 1, 2).collect()}
    assert rows[1]["tag_ids"] == [1, 0] and rows[1]["n_tags"] == 3 and rows[1]["reason"] is None
    assert rows[2]["reason"] == "too_few_vocab_tags" and rows[2]["tag_ids"] == []
    assert rows[3]["reason"] == "too_many_vocab_tags"
    assert rows[4]["reason"] == "too_few_vocab_tags"


def _splits(df, test, val, seed=3):
    return {r["photo_id"]: r["split"] for r in splits.assign_splits(df, test, val, seed).collect()}


def test_splits_are_deterministic_across_partitionings_and_exact_for_counts(spark):
    df = spark.range(5000).withColumnRenamed("id", "photo_id")
    a = _splits(df.repartition(1), 300, 200)
    b = _splits(df.repartition(7), 300, 200)
    assert a == b
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 4500, "val": 200, "test": 300}
    assert _splits(df, 300, 200, seed=4) != a
    # Growing the test count only moves photos from val/train into test (nested draws).
    bigger = _splits(df, 400, 100)
    assert all(bigger[p] == "test" for p, s in a.items() if s == "test")


def test_split_fractions(spark):
    df = spark.range(20000).withColumnRenamed("id", "photo_id")
    a = _splits(df.repartition(3), 0.1, 0.05)
    assert a == _splits(df.repartition(5), 0.1, 0.05)
    share = {s: list(a.values()).count(s) / len(a) for s in ("val", "test")}
    assert abs(share["test"] - 0.1) < 0.01 and abs(share["val"] - 0.05) < 0.01


def test_split_counts_larger_than_data_are_refused(spark):
    df = spark.range(10).withColumnRenamed("id", "photo_id")
    with pytest.raises(PipelineError, match="splits.test"):
        splits.assign_splits(df, 8, 2, 1)
    with pytest.raises(PipelineError, match="both as counts or both as fractions"):
        splits.assign_splits(df, 0.1, 2, 1)


def test_place_names_normalised_like_tags(spark):
    from pipeline.geography import continent_table

    lines = ["1\t2459115:New+York:Town,2347591:New+York:State,23424977:United+States:Country",
             "2\t615702:Paris:Town,12597155:%C3%8Ele-de-France:Region,23424819:France:Country",
             "3\t1:District+9:Town,23424819:France:Country,28350911:Europe%2FParis:Timezone",
             "4\t1:S%C3%A3o+Paulo:Town,2:Nowhereland:Country",      # a country GeoNames does not know
             "5\t1:Broken", "x\t1:Bad+Id:Town", "6\t"]
    places = parse.split_places_lines(spark.createDataFrame([(line,) for line in lines], "value string"))
    got = [tuple(r) for r in place_names.place_names(places, continent_table(spark)).collect()]
    assert len(got) == len(set(got))
    # District 9 has a digit (dropped like such tags); timezones and malformed lines give nothing.
    assert set(got) == {("newyork", "town"), ("newyork", "region"), ("unitedstates", "country"),
                        ("northamerica", "continent"), ("paris", "town"), ("île-de-france", "region"),
                        ("france", "country"), ("europe", "continent"), ("sãopaulo", "town"),
                        ("nowhereland", "country")}


@pytest.mark.slow
def test_build_vocab_job_conserves_and_writes_contract_tables(spark, tmp_path):
    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata

    towns = ["nyc", "galway", "paris"]
    lines, places = [], {}
    for i in range(1, 301):
        town = towns[i % 3]
        tags = ",".join(["common", "photo", f"t{chr(97 + i % 7)}x", town, "rare" if i % 50 == 0 else "cat"])
        if i % 40 == 0:
            tags = "common,photo"          # only dropped-head tags: no vocabulary tag left
        lines.append(at(town, i, tags=tags))
        places[i] = TOWNS[town]
    raw = write_raw(tmp_path / "raw", lines, places)
    cfg = job_config(tmp_path, raw, "vocab.drop_top=2", "vocab.size=50", "splits.test=30", "splits.val=20")
    clean_metadata(cfg)
    build_vocab(cfg)
    voc = spark.read.parquet(str(output_path(cfg.outputs.vocab))).orderBy("index").collect()
    assert "common" not in [r["tag"] for r in voc] and voc[0]["index"] == 0
    ds = spark.read.parquet(str(output_path(cfg.outputs.dataset)))
    rej = spark.read.parquet(str(output_path(cfg.outputs.dataset_rejects)))
    assert ds.count() + rej.count() == 300 and rej.count() == 7
    assert {r["split"]: r["count"] for r in ds.groupBy("split").count().collect()} == \
        {"test": 30, "val": 20, "train": 243}
    stats = json.loads((output_path(tmp_path / "data" / "work" / "stats") / "build_vocab.json").read_text())
    assert stats["images"] == 293 and stats["place_tags_in_vocab"] == 2  # paris, galway (a County)
    names = {(r["name"], r["level"]) for r in spark.read.parquet(str(output_path(cfg.outputs.place_names))).collect()}
    assert ("lettershea", "town") in names and ("ireland", "country") in names
    with pytest.raises(PipelineError, match="vocab.max_tags"):
        build_vocab(job_config(tmp_path, raw, "vocab.max_tags=0"))


@pytest.mark.slow
def test_build_vocab_failed_check_publishes_nothing(spark, tmp_path):
    """A failed check leaves vocabulary, dataset, rejects and stats file as they were; no temps."""
    from jobs.build_vocab import main as build_vocab
    from jobs.clean_metadata import main as clean_metadata

    lines = [at(["nyc", "paris"][i % 2], i, tags=f"cat,dog,t{chr(97 + i % 5)}x") for i in range(1, 41)]
    raw = write_raw(tmp_path / "raw", lines, {i: TOWNS[["nyc", "paris"][i % 2]] for i in range(1, 41)})
    cfg = job_config(tmp_path, raw, "vocab.drop_top=0", "splits.test=5", "splits.val=5")
    clean_metadata(cfg)
    build_vocab(cfg)
    out = cfg.outputs
    outputs = [out.vocab, out.dataset, out.dataset_rejects, out.stats]
    before = [digests(p) for p in outputs]
    other = job_config(tmp_path, raw, "vocab.drop_top=1", "splits.test=10", "splits.val=5")
    with pytest.raises(PipelineError, match="build_vocab: refused"):
        build_vocab(other, check=refuse)
    assert [digests(p) for p in outputs] == before
    assert leftovers(tmp_path / "data" / "work") == []
    build_vocab(other)
    assert [digests(p) for p in outputs] != before
