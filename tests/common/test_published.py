"""common.published: which version of an output is published, read from its folder's names alone."""
from __future__ import annotations

import pytest

from common import published

V1, V2, V3 = "v20261201T000000Z-aaaaaaaa", "v20261202T000000Z-bbbbbbbb", "v20261203T000000Z-cccccccc"


def _folder(pointers: dict[int, str], versions: list[str]) -> tuple[list[str], dict[str, bytes]]:
    files = {published.pointer_name(n): text.encode() for n, text in pointers.items()}
    return [*files, *versions, "_SUCCESS"], files


def _pointer(version: str) -> str:
    return published.Pointer(0, version, published.run_of(version)).to_json()


def test_the_highest_readable_pointer_to_an_existing_version_wins():
    names, files = _folder({1: _pointer(V1), 2: _pointer(V2), 3: '{"version": "v2026', 4: _pointer(V3)}, [V1, V2])
    chosen = published.choose(names, files.__getitem__)
    # 4 names a version that is not there, 3 is torn: 2 is published.
    assert (chosen.seq, chosen.version, chosen.run) == (2, V2, "bbbbbbbb")
    assert published.next_seq(names) == 5
    assert published.leftovers(names, chosen) == [published.pointer_name(1), published.pointer_name(3),
                                                  published.pointer_name(4), V1]
    assert published.leftovers(names, chosen, keep=[V1]) == [published.pointer_name(n) for n in (1, 3, 4)]
    assert published.unpublished_versions(names, chosen) == [V1]


def test_a_folder_never_published_has_no_pointer_and_keeps_what_is_not_ours():
    names, files = _folder({}, [V1])
    assert published.choose(names, files.__getitem__) is None
    assert published.next_seq(names) == 1
    assert published.leftovers(names, None) == [V1]           # _SUCCESS and the like stay
    assert published.parse_pointer(1, b'{"version": "../etc"}') is None


def test_resolve_names_the_path_when_nothing_is_published(tmp_path):
    (tmp_path / "clean").mkdir()
    with pytest.raises(FileNotFoundError, match="clean: no published version"):
        published.resolve(tmp_path / "clean")
    (tmp_path / "clean" / V1).mkdir()
    (tmp_path / "clean" / published.pointer_name(1)).write_text(_pointer(V1))
    assert published.resolve(tmp_path / "clean") == tmp_path / "clean" / V1
    assert published.new_version() > V1 and published.is_version(published.new_version())
