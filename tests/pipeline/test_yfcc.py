"""The YFCC format module: the reference parser on real lines, decoding and tag normalisation."""
from __future__ import annotations

import hashlib
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.yfcc import (COLUMNS_23, COLUMNS_25, YfccFormatError, decode, image_relpath, normalize_tag,
                           normalized_tags, parse_coordinates, parse_line, parse_places, parse_places_line,
                           place_levels, unpadded_hex)


@pytest.fixture(scope="module")
def real_lines(real_head_path):
    with open(real_head_path, encoding="utf-8", newline="") as fh:
        return fh.readlines()


def test_every_real_line_parses_with_typed_fields(real_lines):
    records = [parse_line(line) for line in real_lines]
    assert len(records) == 1000
    assert [r.line_number for r in records] == list(range(1000))
    assert all(isinstance(r.photo_id, int) and r.photo_id > 0 for r in records)
    assert all(r.date_uploaded and r.date_uploaded > 1_000_000_000 for r in records)
    geo = [r for r in records if r.has_geo]
    assert 100 < len(geo) < 300
    assert all(-180 <= r.longitude <= 180 and -90 <= r.latitude <= 90 for r in geo)
    assert all(r.accuracy is not None and 1 <= r.accuracy <= 16 for r in geo)
    assert all(r.marker in (0, 1) for r in records)


def test_real_tags_are_decoded(real_lines):
    first = parse_line(real_lines[0])
    assert "key west florida" in first.user_tags and "canon" in first.user_tags
    assert first.longitude == pytest.approx(-81.804885) and first.latitude == pytest.approx(24.550558)
    assert first.capture_device == "Canon PowerShot ELPH 310 HS"
    assert normalized_tags(first.raw["user_tags"]) == ["canon", "carnivalescatay", "cruise", "elph",
                                                       "keywestflorida", "powershot"]
    # Nothing left URL-encoded after decoding.
    for r in map(parse_line, real_lines):
        for tag in r.user_tags:
            assert "+" not in tag or "%2B" in r.raw["user_tags"]


def test_real_photo_hash_is_unpadded_md5_of_download_url(real_lines):
    records = [parse_line(line) for line in real_lines]
    assert all(unpadded_hex(hashlib.md5(r.download_url.encode()).digest()) == r.photo_hash for r in records)
    assert {len(r.photo_hash) for r in records} - set(range(28, 33)) == set()
    assert any(len(r.photo_hash) < 32 for r in records)   # really unpadded: never "fix" it
    assert image_relpath("6ae91cc04fe06697c9404a5360b9b62") == "6ae/91c/6ae91cc04fe06697c9404a5360b9b62.jpg"


def test_layout_23_and_line_endings(real_lines):
    fields = real_lines[0].rstrip("\n").split("\t")
    short = "\t".join(f for name, f in zip(COLUMNS_25, fields) if name in COLUMNS_23)
    r23 = parse_line(short + "\r\n")          # CRLF
    r25 = parse_line(real_lines[0].rstrip("\n"))  # no final newline
    assert r23.photo_id == r25.photo_id and r23.photo_hash is None and r23.line_number is None
    assert r23.user_tags == r25.user_tags


@pytest.mark.parametrize("line, reason", [
    ("1\t2\t3", "wrong_column_count"),
    ("\t".join(["x"] * 25), "bad_coordinates"),
    (b"caf\xe9\t1".decode("utf-8", "surrogateescape"), "invalid_utf8"),   # bytes read undecoded
])
def test_malformed_lines_raise_with_reason(line, reason):
    with pytest.raises(YfccFormatError) as err:
        parse_line(line)
    assert err.value.reason == reason


def test_coordinates():
    assert parse_coordinates("", "", "") == (None, None, None)
    assert parse_coordinates("-1.0", "-1.0", "") == (None, None, None)   # derived-copy placeholder
    assert parse_coordinates("3.0E-6", "-1.0", "16") == (3.0e-6, -1.0, 16)
    with pytest.raises(YfccFormatError, match="coordinates_out_of_range"):
        parse_coordinates("181", "0", "16")


def test_places_parse_the_spec_example():
    value = ("91476962:Lettershea:Town,2345255:Galway:County,23424803:Ireland:Country,"
             "28350896:Europe%2FDublin:Timezone")
    places = parse_places(value)
    assert [p.type for p in places] == ["Town", "County", "Country", "Timezone"]
    assert places[-1].name == "Europe/Dublin"
    assert place_levels(places) == {"town": "Lettershea", "region": None, "country": "Ireland"}
    pid, entries = parse_places_line("123\t")
    assert pid == 123 and entries == []
    with pytest.raises(YfccFormatError):
        parse_places("12:Name")


def test_decode_is_unquote_plus_not_unquote():
    assert decode("new+york") == "new york"
    assert decode("caf%C3%A9+%2B+1") == "café + 1"
    assert decode("100%") == "100%"            # a stray percent sign stays


@given(st.text())
def test_decode_inverts_form_encoding(text):
    assert decode(quote_plus(text)) == text


@given(st.text())
def test_plain_percent_encoding_decodes_too(text):
    assert decode(quote(text, safe="")) == text


@settings(max_examples=300)
@given(st.text())
def test_normalize_tag_properties(text):
    tag = normalize_tag(text, encoded=False)
    if tag is None:
        stripped = "".join(text.lower().split())
        assert stripped == "" or any(ch.isdecimal() for ch in stripped)
        return
    assert tag == "".join(text.lower().split())
    assert not any(ch.isspace() for ch in tag)
    assert not any(ch.isdecimal() for ch in tag)
    assert normalize_tag(quote_plus(text)) == tag                    # encoded or not, same tag


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_normalize_tag_is_idempotent(text):
    tag = normalize_tag(text, encoded=False)
    if tag is not None:
        assert normalize_tag(tag, encoded=False) in (tag, None)


def test_normalisation_examples():
    assert normalize_tag("New+York") == "newyork"
    assert normalize_tag("hs+310") is None
    assert normalize_tag("summer2012") is None
    assert normalize_tag("+") is None
    assert normalize_tag("z%C3%BCrich") == "zürich"
    assert normalized_tags("beach,Beach,new+york,newyork,2012") == ["beach", "newyork"]
