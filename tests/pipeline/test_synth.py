"""The synthetic world: exact real formats, the phenomena the paper studies, determinism, bad input."""
from __future__ import annotations

import bz2
import collections
import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT
from PIL import Image

from pipeline.synth.generate import SynthError, SynthParams, generate, is_complete
from pipeline.synth.world import CONCEPTS
from pipeline.yfcc import (COLUMNS_23, decode, image_relpath, normalized_tags, parse_line, parse_places_line,
                           place_levels, unpadded_hex)



@pytest.fixture(scope="module")
def lines(synth_world):
    with open(synth_world / "yfcc100m_dataset", encoding="ascii", newline="") as fh:
        return fh.readlines()


@pytest.fixture(scope="module")
def records(lines):
    return [parse_line(line) for line in lines]


@pytest.fixture(scope="module")
def places(synth_world):
    with open(synth_world / "yfcc100m_places", encoding="ascii") as fh:
        return [parse_places_line(line) for line in fh]


@pytest.fixture(scope="module")
def truth(synth_world):
    return pd.read_parquet(synth_world / "world_photos.parquet")


def test_dataset_lines_have_25_ascii_fields(lines, records):
    assert len(lines) == 2500
    assert all(line.endswith("\n") and line.count("\t") == 24 for line in lines)
    assert [r.line_number for r in records] == list(range(2500))
    ids = [r.photo_id for r in records]
    assert len(set(ids)) == len(ids)
    assert max(ids) > 2**31                                 # ids exceed int32, as in the real data


def test_hash_is_unpadded_md5_of_download_url(records):
    for r in records:
        assert r.photo_hash == unpadded_hex(hashlib.md5(r.download_url.encode()).digest())
    assert any(len(r.photo_hash) < 32 for r in records)


def _url_shapes(r) -> tuple[str, str]:
    """A record's page and download URLs with its own field values replaced by their names."""
    values = [(r.secret, "<secret>"), (r.secret_original, "<secret_original>"), (r.user_nsid, "<nsid>"),
              (str(r.photo_id), "<photo_id>"), (f"farm{r.farm_id}.", "farm<farm_id>."),
              (f"/{r.server_id}/", "/<server_id>/")]

    def shape(url: str) -> str:
        for value, name in values:
            url = url.replace(value, name)
        return url

    return shape(r.page_url), shape(r.download_url)


def test_urls_and_licenses_look_like_the_real_lines(records, real_head_path):
    """Photo and video rows have the real lines' URL forms, and every line a Creative Commons licence."""
    with open(real_head_path, encoding="utf-8", newline="") as fh:
        real = [parse_line(line) for line in fh]
    real_shapes = collections.defaultdict(set)
    for r in real:
        real_shapes[r.marker].add(_url_shapes(r))
    assert real_shapes[1] == {("http://www.flickr.com/videos/<nsid>/<photo_id>/",
                               "http://www.flickr.com/videos/<nsid>/<photo_id>/play/orig/<secret_original>")}
    synth_shapes = collections.defaultdict(set)
    for r in records:
        synth_shapes[r.marker].add(_url_shapes(r))
    assert set(synth_shapes) == {0, 1}
    for marker, shapes in synth_shapes.items():
        assert shapes <= real_shapes[marker], (marker, shapes - real_shapes[marker])
    # Real lines are all Creative Commons: a non-empty licence URL, from the same few licences.
    real_licenses = {(r.license_name, r.license_url) for r in real}
    assert all(url.startswith("http://creativecommons.org/licenses/") for _, url in real_licenses)
    assert {(r.license_name, r.license_url) for r in records} <= real_licenses


def test_free_text_is_url_encoded(records):
    for r in records:
        for col in ("user_nickname", "title", "description", "user_tags", "capture_device"):
            raw = r.raw[col]
            assert " " not in raw and "\t" not in raw and "\n" not in raw
    assert any("%0A" in r.raw["description"] for r in records)          # encoded newlines
    assert any("%C3" in r.raw["user_tags"] for r in records)            # non-ASCII place names
    assert any("+" in t for r in records for t in r.raw["user_tags"].split(","))   # multi-word tags
    for r in records:
        tags = r.raw["user_tags"].split(",") if r.raw["user_tags"] else []
        assert tags == sorted(tags) and len(tags) == len(set(tags))   # alphabetical, distinct
        assert decode(r.raw["user_tags"]) == decode(r.raw["user_tags"]).lower()   # lower-case tags


def test_geo_fields_and_dates(records, truth):
    geo = [r for r in records if r.has_geo]
    no_geo = [r for r in records if not r.has_geo]
    assert no_geo and all(r.raw["longitude"] == r.raw["latitude"] == r.raw["accuracy"] == "" for r in no_geo)
    assert all(1 <= r.accuracy <= 16 for r in geo)
    assert all(r.date_taken is not None and r.date_taken.year >= 1970 for r in records)
    assert all(r.raw["date_taken"].endswith(".0") and len(r.raw["date_taken"]) == 21 for r in records)


def test_places_align_with_dataset(records, places):
    assert [p[0] for p in places] == [r.photo_id for r in records]
    types = collections.Counter(p.type for _, entries in places for p in entries)
    assert {"Town", "Country", "Timezone", "Suburb", "County"} <= set(types)
    assert types["State"] + types["Province"] + types["Region"] > 0
    for r, (_, entries) in zip(records, places):
        if not r.has_geo:
            assert entries == []
        else:
            assert entries[-1].type == "Timezone" and "/" in entries[-1].name
            assert place_levels(entries)["country"] is not None


def test_rows_the_pipeline_must_drop_are_present(records, places):
    kinds = collections.Counter()
    for r, (_, entries) in zip(records, places):
        if r.is_video:
            kinds["video"] += 1
        elif not r.has_geo:
            kinds["no_geo"] += 1
        elif place_levels(entries)["town"] is None:
            kinds["no_town"] += 1
        elif not normalized_tags(r.raw["user_tags"]):
            kinds["no_tags"] += 1
        else:
            kinds["kept"] += 1
    assert min(kinds["video"], kinds["no_geo"], kinds["no_town"], kinds["no_tags"]) > 0
    assert kinds["kept"] > 0.7 * len(records)


def test_images_decode_at_the_mirror_path(synth_world, records, truth):
    by_id = truth.set_index("photo_id")
    root = synth_world / "images"
    decoded = missing = corrupt = 0
    for r in records:
        path = root / image_relpath(r.photo_hash)
        t = by_id.loc[r.photo_id]
        if r.is_video or t.missing_image:
            assert not path.exists()
            missing += not r.is_video
            continue
        if t.corrupt_image:
            with pytest.raises(OSError):
                Image.open(path).convert("RGB")
            corrupt += 1
            continue
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
            im.convert("RGB")
        decoded += 1
    assert decoded > 2000


def test_place_dependent_prevalence_and_language(synth_world, truth, records):
    world = json.loads((synth_world / "world.json").read_text())
    assert [c["name"] for c in world["concepts"]] == [c.name for c in CONCEPTS]
    assert {c["kind"] for c in world["concepts"]} == {"scene", "regional", "invariant"}
    from pipeline.synth.geography import load_geography

    towns = load_geography().towns
    t = truth.assign(coastal=towns["coastal"].to_numpy()[truth["town_index"]],
                     alat=np.abs(towns["lat"].to_numpy()[truth["town_index"]]))
    beach = [c.name for c in CONCEPTS].index("beach")
    snow = [c.name for c in CONCEPTS].index("snow")
    share = lambda df, k: (df["concept"] == k).mean()
    assert share(t[t.coastal], beach) > 3 * share(t[~t.coastal], beach)
    assert share(t[t.alat > 50], snow) > 3 * share(t[t.alat < 35], snow)
    # The same concept named in the local language where one is spoken.
    assert set(t["tag_language"]) >= {"en", "es", "de"}
    spanish = truth[truth["tag_language"] == "es"]["photo_id"]
    words = collections.Counter(tag for r in records if r.photo_id in set(spanish) for tag in r.user_tags)
    assert any(words[w] for w in ("carretera", "iglesia", "casa", "playa", "mercado"))


def test_about_three_photos_in_four_carry_place_names(records, places):
    tagged = with_place = 0
    for r, (_, entries) in zip(records, places):
        levels = place_levels(entries)
        norm = set(normalized_tags(r.raw["user_tags"]))
        if levels["town"] and norm:
            names = {"".join(str(v).lower().split()) for v in levels.values() if v}
            tagged += 1
            with_place += bool(names & norm)
    # About 3 in 4 (the supplement: 78% in YFCC); users tag alike, so a small world varies around that.
    assert 0.45 < with_place / tagged < 0.9


def test_pixels_carry_the_place_in_the_frame(synth_world, records, truth):
    """Most photos are framed in their town's colour (hue: longitude), so pixels tell the region."""
    import colorsys

    from pipeline.synth.geography import load_geography
    from pipeline.synth.world import landmark_color

    towns = load_geography().towns
    by_id = truth.set_index("photo_id")
    close = {True: [], False: []}
    for r in records[:600]:
        t = by_id.loc[r.photo_id]
        path = synth_world / "images" / image_relpath(r.photo_hash)
        if r.is_video or t.missing_image or t.corrupt_image:
            continue
        with Image.open(path) as im:
            px = np.asarray(im.convert("RGB"), dtype=np.float64)
        band = px[1:5, 24:40].reshape(-1, 3).mean(axis=0) / 255      # middle of the top edge
        want = landmark_color(towns["lat"].to_numpy()[t.town_index], towns["lon"].to_numpy()[t.town_index]) / 255
        hue = lambda rgb: colorsys.rgb_to_hsv(*rgb)[0]
        d = abs(hue(band) - hue(want))
        close[bool(t.ambient)].append(min(d, 1 - d) < 0.05)
    assert len(close[True]) > 300 and np.mean(close[True]) > 0.9
    assert np.mean(close[False]) < 0.5


def test_prominent_concepts_are_tagged_more_often(records, truth):
    by_id = truth.set_index("photo_id")
    names = [{c.name, *c.local_names.values()} for c in CONCEPTS]
    tagged = {"faint": [], "prominent": []}
    for r in records:
        t = by_id.loc[r.photo_id]
        if r.user_tags and t.salience < 0.5:
            tagged["faint"].append(bool(names[t.concept] & set(r.user_tags)))
        elif r.user_tags and t.salience > 0.8:
            tagged["prominent"].append(bool(names[t.concept] & set(r.user_tags)))
    assert np.mean(tagged["prominent"]) > 1.5 * np.mean(tagged["faint"])


def test_camera_tags_name_the_camera_that_took_the_photo(records):
    """People tag the camera they own: a camera tag always matches the capture_device column."""
    brands = {"canon": "canon", "nikon": "nikon", "iphone": "iphone", "sony": "sony", "lumix": "panasonic",
              "olympus": "olympus", "fuji": "fujifilm", "pentax": "pentax"}
    seen = 0
    for r in records:
        for tag in set(r.user_tags) & set(brands):
            seen += 1
            assert brands[tag] in (r.capture_device or "").lower(), (tag, r.capture_device)
    assert seen > 50


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (generate(SynthParams(out=tmp_path / n, photos=400, seed=s, images=False), progress=None)
               for n, s in (("a", 5), ("b", 5), ("c", 6)))
    read = lambda n, f: (tmp_path / n / f).read_bytes()
    assert read("a", "yfcc100m_dataset") == read("b", "yfcc100m_dataset")
    assert read("a", "yfcc100m_places") == read("b", "yfcc100m_places")
    assert read("a", "yfcc100m_dataset") != read("c", "yfcc100m_dataset")
    assert a == {**b, "seconds": a["seconds"]}


@pytest.mark.slow
def test_layout_23_with_hash_file_and_bz2(tmp_path):
    plain = tmp_path / "plain"
    packed = tmp_path / "packed"
    generate(SynthParams(out=plain, photos=300, seed=2, layout=23, images=False), progress=None)
    generate(SynthParams(out=packed, photos=300, seed=2, layout=23, images=False, compress="bz2"), progress=None)
    lines = (plain / "yfcc100m_dataset").read_text().splitlines()
    assert all(line.count("\t") == len(COLUMNS_23) - 1 for line in lines)
    hashes = dict(line.split("\t") for line in (plain / "yfcc100m_hash").read_text().splitlines())
    for line in lines:
        r = parse_line(line)
        assert r.photo_hash is None
        assert hashes[str(r.photo_id)] == unpadded_hex(hashlib.md5(r.download_url.encode()).digest())
    for name in ("yfcc100m_dataset", "yfcc100m_places", "yfcc100m_hash"):
        assert bz2.open(packed / f"{name}.bz2").read() == (plain / name).read_bytes()


def test_is_complete_marks_finished_worlds(tmp_path):
    params = SynthParams(out=tmp_path, photos=50, seed=1, images=False)
    assert not is_complete(tmp_path, params)
    generate(params, progress=None)
    assert is_complete(tmp_path, params)
    assert not is_complete(tmp_path, SynthParams(out=tmp_path, photos=51, seed=1, images=False))


@pytest.mark.parametrize("args, message", [
    (["--photos", "-5"], "--photos must be a positive"),
    (["--photos", "10", "--layout", "24"], "--layout must be 25 or 23"),
    (["--photos", "10", "--compress", "zip"], "--compress must be none or bz2"),
    (["--photos", "10", "--seed", "-1"], "--seed must be >= 0"),
])
def test_cli_rejects_impossible_arguments(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(tmp_path / "w"), *args],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_cli_rejects_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(blocker / "w"), "--photos", "5"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "cannot write there" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_params_validate_directly(tmp_path):
    with pytest.raises(SynthError, match="--image-size"):
        SynthParams(out=tmp_path, photos=5, image_size=8).validate()


def test_decoded_titles_mention_the_town(records, places):
    titled = [(decode(r.raw["title"]), place_levels(e)["town"]) for r, (_, e) in zip(records, places)
              if " in " in decode(r.raw["title"])]
    assert titled and sum(t.endswith(str(town)) for t, town in titled) > 0.8 * len(titled)
