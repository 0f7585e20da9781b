"""The Spark column parser agrees with the pure-Python reference parser in pipeline.yfcc."""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from pipeline import parse, yfcc

pytestmark = pytest.mark.spark


def _py_reason(line: str) -> str | None:
    try:
        yfcc.parse_line(line, layout=25)
        return None
    except yfcc.YfccFormatError as exc:
        return exc.reason


def test_real_lines_agree_with_parse_line(spark, real_head_path):
    lines = real_head_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000
    df = spark.createDataFrame([(i, l) for i, l in enumerate(lines)], "i long, value string")
    rows = {r["i"]: r for r in parse.parse_lines(df, 25).collect()}
    assert len(rows) == 1000
    for i, line in enumerate(lines):
        got = rows[i]
        reason = _py_reason(line)
        assert got["reason"] == reason, (i, line[:200])
        if reason is not None:
            continue
        rec = yfcc.parse_line(line, layout=25)
        assert got["photo_id"] == rec.photo_id
        assert got["line_number"] == rec.line_number
        assert got["photo_hash"] == rec.photo_hash
        assert got["latitude"] == rec.latitude and got["longitude"] == rec.longitude
        assert got["accuracy"] == rec.accuracy
        assert got["marker"] == rec.marker
        assert got["date_uploaded"] == rec.date_uploaded
        assert got["tags"] == yfcc.normalized_tags(rec.raw["user_tags"]), (i, rec.raw["user_tags"])
        assert got["n_raw_tags"] == len([t for t in rec.raw["user_tags"].split(",") if t])
        assert got["date_taken"] == rec.raw["date_taken"]


TRICKY_TAGS = [
    "new+york", "caf%C3%A9", "100%25+sure", "100%+sure%21", "%E2%82%AC", "A%0AB", "Tag%09x",
    "2012", "%D9%A3", "x%2Cy", "%ZZ", "%", "%C3", "M%C3%BCNCHEN", "+++", "stra%C3%9Fe", "%CE%A3%CE%91%CE%A3",
    "%E3%80%80wide%E3%80%80space", "a%C2%A0b", "%F0%9F%98%80smile",
]


def test_normalize_tag_agrees_on_real_and_tricky_tags(spark, real_head_path):
    raw = set(TRICKY_TAGS)
    for line in real_head_path.read_text(encoding="utf-8").splitlines():
        user_tags = line.split("\t")[10]
        raw.update(t for t in user_tags.split(",") if t)
    raw = sorted(raw)
    assert len(raw) > 1000
    df = spark.createDataFrame([(t,) for t in raw], "tag string")
    got = {r["tag"]: r["norm"] for r in df.select("tag", parse.normalize_tag(F.col("tag")).alias("norm")).collect()}
    mismatches = {t: (got[t], yfcc.normalize_tag(t)) for t in raw if got[t] != yfcc.normalize_tag(t)}
    assert not mismatches


def test_whole_field_normalisation_agrees_on_tricky_fields(spark):
    fields = [",".join(TRICKY_TAGS), ",".join(reversed(TRICKY_TAGS)), "a%2Cb,a%2cb,,x+y,X%20Y,%2C", "",
              ",,,", "caf%C3%A9,CAF%C3%89,2012+trip,trip", "%C3,%A9", "%E2%80%83em%E2%80%83space,a%1Cb",
              # no "%" and ASCII: the fast path (split on the field's own commas)
              "trip,2012+trip,TRIP,a+b,A+B,ab1c,,x", "New+York,new+york,+,1,++a++", "2012,2013",
              # raw non-ASCII without "%": the full path
              "caf\u00e9,CAF\u00c9,x\u3000y,\u0663a,b"]
    df = spark.createDataFrame([(f,) for f in fields], "ut string")
    got = {r["ut"]: r["tags"] for r in parse.with_normalized_tags(df, "ut", "tags").collect()}
    assert got == {f: yfcc.normalized_tags(f) for f in fields}


def test_decode_keeps_stray_percent_like_unquote_plus(spark):
    df = spark.createDataFrame([(t,) for t in TRICKY_TAGS], "t string")
    got = {r["t"]: r["d"] for r in df.select("t", parse.decode(F.col("t")).alias("d")).collect()}
    assert got == {t: yfcc.decode(t) for t in TRICKY_TAGS}


PLACES = [
    "91476962:Lettershea:Town,2345255:Galway:County,23424803:Ireland:Country,28350896:Europe%2FDublin:Timezone",
    "2459115:New+York:Town,2347591:New+York:State,23424977:United+States:Country,56043648:America%2FNew_York:Timezone",
    "24865670:Hong+Kong:Special+Administrative+Region,24865698:Kowloon:Town,23424781:China:Country",
    "1:S%C3%A3o+Paulo:Town,2:S%C3%A3o+Paulo:State,3:Brazil:Country",
    "22722:Suburbia:Suburb,44418:London:Town,24554868:England:Country,23424975:United+Kingdom:Country",
    "",
    "12345:NoType",
    "abc:Name:Town",
    "7::Town,8:Somewhere:Town,9:Land:Country",
    "5:Nowhere:Suburb,,6:Xanadu:Province",
]


def test_places_agree_with_parse_places(spark):
    lines = [f"{i}\t{v}" for i, v in enumerate(PLACES)] + ["bad line without tab"]
    df = spark.createDataFrame([(l,) for l in lines], "value string")
    got = {r["photo_id"]: r for r in parse.parse_places_lines(df).collect()}
    assert got[None]["places_reason"] == "bad_places_line"
    for i, value in enumerate(PLACES):
        try:
            levels = yfcc.place_levels(yfcc.parse_places(value))
            reason = None
        except yfcc.YfccFormatError:
            levels, reason = {"town": None, "region": None, "country": None}, "bad_place_entry"
        row = got[i]
        assert row["places_reason"] == reason, value
        assert {k: row[k] for k in levels} == levels, value


def test_detect_layout():
    line25 = "\t".join(["x"] * 25)
    line23 = "\t".join(["x"] * 23)
    assert parse.detect_layout([line25, line25, "junk"]) == 25
    assert parse.detect_layout([line23 + "\r\n", line23]) == 23
    assert parse.detect_layout(["junk", ""]) is None
