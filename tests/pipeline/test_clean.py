"""clean_metadata: every crafted bad line lands in rejects with its reason, and counts conserve."""
from __future__ import annotations

import bz2

import pytest
from helpers.spark_jobs import digests, job_config, leftovers, output_path, refuse
from pyspark.sql import functions as F
from helpers.yfcc import TOWNS, at, line, photo_hash, write_raw

from pipeline import clean, parse
from pipeline.config import PipelineError
from pipeline.geography import continent_table

pytestmark = pytest.mark.spark


# (line, expected reason or None); photo ids are unique unless a test says otherwise.
CASES = [
    (at("nyc", 1, tags="new+york,cat,2012"), None),
    (at("nyc", 2, marker="1"), "video"),
    (line(3, lon="", lat="", accuracy=""), "no_geo"),
    (line(4, lon="-1.0", lat="-1.0", accuracy=""), "no_geo"),
    (at("galway", 5, lon="3.0E-6", lat="53.27"), None),
    (line(6, lat="95.0"), "coordinates_out_of_range"),
    (line(7, lat="abc"), "bad_coordinates"),
    ("\t".join(["x"] * 24), "wrong_column_count"),
    ("", "empty_line"),
    (at("nyc", 9, tags=""), "no_tags"),
    (at("nyc", 10, tags="2012,2013,+"), "no_usable_tags"),
    (at("nyc", 11), "no_places"),
    (at("notown", 12), "no_town"),
    (at("nyc", 13), "bad_places"),
    (at("paris", 14, description="line+one%0Aline+two" + "x" * 200_000), None),
    (at("nyc", 15, marker="2"), "bad_marker"),
    (line(16, photo_id="16x"), "bad_photo_id"),
    (at("paris", 17, line_number=100), "duplicate_photo_id"),
    (at("paris", 17, line_number=17), None),
    (at("galway", 18, tags="Caf%C3%A9,caf%C3%A9,new+york"), None),
    # Duplicates are ranked before the places join: an earlier line rejected on its own (no usable
    # tags, no photo hash) must not make the later, good line of the same photo a duplicate.
    (at("paris", 19, tags="2012", line_number=19), "no_usable_tags"),
    (at("paris", 19, line_number=119), None),
    (at("paris", 20, photo_hash="", line_number=20), "no_photo_hash"),
    (at("paris", 20, line_number=120), None),
]
PLACES = {1: TOWNS["nyc"], 2: TOWNS["nyc"], 5: TOWNS["galway"], 9: TOWNS["nyc"], 10: TOWNS["nyc"],
          12: TOWNS["notown"], 13: "1:Broken", 14: TOWNS["paris"], 15: TOWNS["nyc"],
          17: TOWNS["paris"], 18: TOWNS["galway"], 19: TOWNS["paris"], 20: TOWNS["paris"]}


def _run_clean(spark, tmp_path, raw, *extra):
    from jobs.clean_metadata import main

    cfg = job_config(tmp_path, raw, *extra)
    main(cfg)
    return cfg, spark.read.parquet(str(output_path(cfg.outputs.clean))), spark.read.parquet(str(output_path(cfg.outputs.clean_rejects)))


def test_crafted_lines_and_reasons(spark, tmp_path):
    raw = write_raw(tmp_path / "raw", [l for l, _ in CASES], PLACES, crlf_from=10, final_newline=False)
    cfg, kept, rej = _run_clean(spark, tmp_path, raw)
    kept_rows = {r["photo_id"]: r for r in kept.collect()}
    assert sorted(kept_rows) == [1, 5, 14, 17, 18, 19, 20]
    assert (kept_rows[19]["line_number"], kept_rows[20]["line_number"]) == (119, 120)
    assert kept_rows[1]["tags"] == ["newyork", "cat"]
    assert kept_rows[18]["tags"] == ["café", "newyork"]
    assert (kept_rows[1]["town"], kept_rows[1]["region"], kept_rows[1]["country"], kept_rows[1]["continent"]) == \
        ("New York", "New York", "United States", "North America")
    assert kept_rows[14]["region"] == "Île-de-France" and kept_rows[14]["continent"] == "Europe"
    assert kept_rows[5]["longitude"] == 3.0e-6
    assert kept_rows[17]["line_number"] == 17
    assert kept_rows[1]["photo_hash"] == photo_hash("http://farm1.staticflickr.com/1/1_abc.jpg")
    got = sorted(r["reason"] for r in rej.collect())
    assert got == sorted(r for _, r in CASES if r is not None)
    assert kept.count() + rej.count() == len(CASES)
    long_reject = rej.where(F.col("reason") == "wrong_column_count").first()
    assert long_reject["file"].endswith("yfcc100m_dataset")


def test_lines_rejected_before_the_joins_go_through_them_narrow(spark):
    """A line rejected by its own fields (video, no geotag, no tags) keeps only what the rejects
    table and the duplicate ranking read while every line is shuffled, sorted and joined."""
    lines = spark.createDataFrame([(text, 7) for text, _ in CASES], "value string, file_id long")
    places = spark.createDataFrame([(f"{pid}\t{value}",) for pid, value in PLACES.items()], "value string")
    out = clean.classify(parse.parse_lines(lines, 25), parse.parse_places_lines(places), continent_table(spark, None))
    rows = out.collect()
    assert sorted(r["reason"] for r in rows if r["reason"]) == sorted(r for _, r in CASES if r is not None)
    early = [r for r in rows if r["reason"] in ("video", "no_geo", "no_tags", "no_usable_tags")]
    assert len(early) == 6
    for r in early:
        assert (r["file_id"], r["line_hash"] is not None) == (7, True)
        assert all(r[c] is None for c in ("tags", "download_url", "user_nsid", "date_taken", "photo_hash",
                                          "latitude", "marker", "n_raw_tags")), r
    video = next(r for r in early if r["reason"] == "video")
    assert (video["photo_id"], video["line_number"]) == (2, 2)
    late = next(r for r in rows if r["reason"] == "no_places")     # rejected in a join: not narrowed
    assert late["download_url"] and late["tags"]
    assert next(r for r in rows if r["photo_id"] == 1 and r["reason"] is None)["tags"] == ["newyork", "cat"]


@pytest.mark.slow
def test_23_column_layout_bz2_with_hash_file(spark, tmp_path):
    lines = [at("nyc", i, layout=23) for i in (1, 2, 3)]
    hashes = {1: "abc123", 2: "def456"}
    raw = write_raw(tmp_path / "raw", lines, {i: TOWNS["nyc"] for i in (1, 2, 3)}, compress=True,
                    layout=23, hashes=hashes)
    _, kept, rej = _run_clean(spark, tmp_path, raw)
    assert {r["photo_id"]: r["photo_hash"] for r in kept.collect()} == hashes
    assert [r["reason"] for r in rej.collect()] == ["no_photo_hash"]


@pytest.mark.slow
def test_rerun_gives_the_same_output(spark, tmp_path):
    raw = write_raw(tmp_path / "raw", [l for l, _ in CASES], PLACES)
    _, kept1, rej1 = _run_clean(spark, tmp_path, raw)
    first = (sorted(map(tuple, kept1.collect())), sorted(map(tuple, rej1.collect())))
    _, kept2, rej2 = _run_clean(spark, tmp_path, raw)
    assert (sorted(map(tuple, kept2.collect())), sorted(map(tuple, rej2.collect()))) == first
    assert leftovers(tmp_path / "data" / "work") == []


@pytest.mark.slow
def test_dictionary_filter(spark, tmp_path):
    lines = [at("nyc", 1, tags="cat,dog,new+york"), at("nyc", 2, tags="zebra")]
    raw = write_raw(tmp_path / "raw", lines, {1: TOWNS["nyc"], 2: TOWNS["nyc"]})
    words = tmp_path / "words.txt"
    words.write_text("dog 0.1 0.2\ncat 0.3 0.4\nNewYork 0.5\n")
    _, kept, rej = _run_clean(spark, tmp_path, raw, f"clean.dictionary={words}")
    assert [(r["photo_id"], r["tags"]) for r in kept.collect()] == [(1, ["cat", "dog", "newyork"])]
    assert [r["reason"] for r in rej.collect()] == ["no_usable_tags"]


def test_missing_input_names_the_setting(spark, tmp_path):
    from jobs.clean_metadata import main

    with pytest.raises(PipelineError, match="clean.dataset"):
        main(job_config(tmp_path, tmp_path / "nowhere"))


def test_real_lines_all_accounted_for(spark, tmp_path, real_head_path):
    """The 1,000 real lines have no places here, so every parsable geotagged one is no_places; one
    crafted line with places is kept beside them."""
    raw = tmp_path / "raw"
    raw.mkdir()
    kept_line = at("nyc", 1)
    (raw / "yfcc100m_dataset").write_bytes(real_head_path.read_bytes() + (kept_line + "\n").encode())
    (raw / "yfcc100m_places").write_text(f"1\t{TOWNS['nyc']}\n")
    _, kept, rej = _run_clean(spark, tmp_path, raw)
    reasons = {r["reason"]: r["count"] for r in rej.groupBy("reason").count().collect()}
    assert [r["photo_id"] for r in kept.collect()] == [1] and sum(reasons.values()) == 1000
    assert set(reasons) <= set(clean.REJECT_REASONS)
    assert reasons.get("no_places", 0) > 0 and reasons.get("no_geo", 0) > 0


@pytest.mark.slow
def test_an_input_that_keeps_nothing_stops_in_clean_metadata(spark, tmp_path, real_head_path):
    """Real lines without their places file keep no row: the job stops with the reasons and
    publishes nothing, instead of build_vocab failing on an empty table."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "yfcc100m_dataset").write_bytes(real_head_path.read_bytes())
    (raw / "yfcc100m_places").write_text("")
    from jobs.clean_metadata import main

    cfg = job_config(tmp_path, raw)
    with pytest.raises(PipelineError, match=r"none of its 1,000 lines was kept \(commonest reasons: .*no_places"):
        main(cfg)
    assert not (tmp_path / "data" / "work" / "clean").exists()


@pytest.mark.slow
def test_bytes_that_are_not_utf8_are_rejected_never_repaired(spark, tmp_path):
    """A line with undecodable bytes (here in its title) is rejected as invalid_utf8, whole; a valid
    non-ASCII line beside it is kept as it is; a places line with bad bytes is bad_places."""
    raw = write_raw(tmp_path / "raw", [at("nyc", 1), at("paris", 2, tags="caf%C3%A9"), at("nyc", 3)],
                    {1: TOWNS["nyc"], 2: TOWNS["paris"], 3: TOWNS["nyc"]})
    data = (raw / "yfcc100m_dataset").read_bytes().split(b"\n")
    fields = data[0].split(b"\t")
    fields[8] = b"caf\xe9+\xff"   # the title, Latin-1 bytes
    data[0] = b"\t".join(fields)
    (raw / "yfcc100m_dataset").write_bytes(b"\n".join(data))
    places = (raw / "yfcc100m_places").read_bytes().split(b"\n")
    places[2] = places[2].replace(b"New", b"N\xffw")
    (raw / "yfcc100m_places").write_bytes(b"\n".join(places))
    _, kept, rej = _run_clean(spark, tmp_path, raw)
    assert [(r["photo_id"], r["tags"]) for r in kept.collect()] == [(2, ["café"])]
    got = {r["photo_id"] or r["line"][:4]: r["reason"] for r in rej.collect()}
    assert sorted(got.values()) == ["bad_places", "invalid_utf8"]
    bad = rej.where(F.col("reason") == "invalid_utf8").first()
    assert "\ufffd" in bad["line"] and bad["line"].startswith(data[0][:5].decode())


@pytest.mark.slow
def test_folder_of_parts_plain_and_bz2(spark, tmp_path):
    import bz2

    lines = [at("nyc", i) for i in range(1, 7)]
    raw = write_raw(tmp_path / "raw", [], {i: TOWNS["nyc"] for i in range(1, 7)})
    (raw / "yfcc100m_dataset").unlink()
    parts = raw / "yfcc100m_dataset"
    parts.mkdir()
    (parts / "part-0").write_text("\n".join(lines[:3]) + "\n")
    (parts / "part-1.bz2").write_bytes(bz2.compress(("\n".join(lines[3:]) + "\n").encode()))
    _, kept, rej = _run_clean(spark, tmp_path, raw)
    assert sorted(r["photo_id"] for r in kept.collect()) == list(range(1, 7)) and rej.count() == 0


@pytest.mark.slow
def test_place_names_from_every_places_record(spark, tmp_path):
    """Every continent, country, region (County too) and town of yfcc100m_places is listed, whether
    or not its photo is kept: England and the United Kingdom of a UK record, Galway (a County),
    Kyoto (whose only photo is a video), Paris (a places record with no dataset line)."""
    lines = [at("london", 1), at("galway", 2), at("kyoto", 3, marker="1")]
    places = {1: TOWNS["london"], 2: TOWNS["galway"], 3: TOWNS["kyoto"], 4: "1:Broken", 5: TOWNS["paris"]}
    cfg, kept, rej = _run_clean(spark, tmp_path, write_raw(tmp_path / "raw", lines, places))
    assert sorted(r["photo_id"] for r in kept.collect()) == [1, 2]
    assert [(r["photo_id"], r["reason"]) for r in rej.collect()] == [(3, "video")]
    assert kept.where(F.col("photo_id") == 1).first()["country"] == "England"   # the first Country entry
    names = {(r["name"], r["level"]) for r in spark.read.parquet(str(output_path(cfg.outputs.place_names))).collect()}
    assert names == {
        ("london", "town"), ("greaterlondon", "region"), ("england", "country"), ("unitedkingdom", "country"),
        ("lettershea", "town"), ("galway", "region"), ("ireland", "country"),
        ("kyoto", "town"), ("kyoto", "region"), ("japan", "country"), ("asia", "continent"),
        ("paris", "town"), ("île-de-france", "region"), ("france", "country"), ("europe", "continent"),
    }


@pytest.mark.parametrize("name, setting, layout", [
    ("yfcc100m_dataset", "clean.dataset", 25),
    ("yfcc100m_places", "clean.places", 25),
    ("yfcc100m_hash", "clean.hash", 23),
])
@pytest.mark.slow
def test_two_candidate_inputs_stop_the_job(spark, tmp_path, name, setting, layout):
    """A plain file next to its .bz2 is ambiguous: the job names both and how to choose."""
    from jobs.clean_metadata import main

    raw = write_raw(tmp_path / "raw", [at("nyc", 1, layout=layout)], {1: TOWNS["nyc"]}, layout=layout,
                    hashes={1: "abc123"})
    packed = raw / f"{name}.bz2"
    packed.write_bytes(bz2.compress((raw / name).read_bytes()))
    with pytest.raises(PipelineError) as err:
        main(job_config(tmp_path, raw))
    message = str(err.value)
    assert str(raw / name) in message and str(packed) in message and f"{setting}=<path>" in message
    assert not (tmp_path / "data" / "work" / "clean").exists()
    _, kept, rej = _run_clean(spark, tmp_path, raw, f"{setting}={packed}")   # one explicit path
    assert [r["photo_id"] for r in kept.collect()] == [1] and rej.count() == 0


@pytest.mark.slow
def test_failed_check_publishes_nothing(spark, tmp_path):
    """A failed conservation check leaves the previous clean, rejects and place names as they were."""
    from jobs.clean_metadata import main

    cfg, _, _ = _run_clean(spark, tmp_path, write_raw(tmp_path / "raw", [at("nyc", 1), at("paris", 2)],
                                                      {1: TOWNS["nyc"], 2: TOWNS["paris"]}))
    outputs = [cfg.outputs.clean, cfg.outputs.clean_rejects, cfg.outputs.place_names]
    before = [digests(p) for p in outputs]
    other = write_raw(tmp_path / "raw2", [at("galway", 3), line(4, lat="abc")], {3: TOWNS["galway"]})
    with pytest.raises(PipelineError, match="clean_metadata: refused"):
        main(job_config(tmp_path, other), check=refuse)
    assert [digests(p) for p in outputs] == before
    assert leftovers(tmp_path / "data" / "work") == []
    main(job_config(tmp_path, other))                    # the real check passes and publishes all three
    assert [digests(p) for p in outputs] != before
    assert {r["name"] for r in spark.read.parquet(str(output_path(cfg.outputs.place_names))).collect()} >= {"lettershea", "galway"}


def test_a_folder_mixing_layouts_stops_before_the_parse_naming_a_file_of_each(spark, tmp_path):
    raw = write_raw(tmp_path / "raw", [], {1: TOWNS["nyc"], 2: TOWNS["nyc"]})
    (raw / "yfcc100m_dataset").unlink()
    parts = raw / "yfcc100m_dataset"
    parts.mkdir()
    (parts / "part-0").write_text(at("nyc", 1) + "\n")
    (parts / "part-1").write_text(at("nyc", 2, layout=23) + "\n")
    with pytest.raises(PipelineError, match=r"mixes layouts: .*part-0 has 25 fields, .*part-1 has 23"):
        _run_clean(spark, tmp_path, raw)


def test_an_explicit_layout_the_file_does_not_have_stops_naming_the_file(spark, tmp_path):
    raw = write_raw(tmp_path / "raw", [at("nyc", 1)], {1: TOWNS["nyc"]})
    with pytest.raises(PipelineError, match=r"yfcc100m_dataset: its lines have 25 TAB-separated fields, but clean.layout=23"):
        _run_clean(spark, tmp_path, raw, "clean.layout=23")
    assert not (tmp_path / "data" / "work" / "clean").exists()      # stopped before anything was written
