"""The configuration composed from code (common.config), as the jobs, the serving commands and the
tests compose it."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from common.config import ConfigError, compose_config


def test_compose_resolves_and_freezes_with_overrides():
    cfg = compose_config("serving", ["paths.root_dir=/data/locsens", "search.k=5"])
    assert cfg.gallery.dir == "/data/locsens/outputs/search" and cfg.search.k == 5
    assert cfg.gallery.embeddings_dir == cfg.paths.mcc_embeddings == "/data/locsens/outputs/mcc/embeddings"
    with pytest.raises(Exception):
        cfg.search.k = 6                                          # read-only: what ran is what was composed
    raw = compose_config("serving", resolve=False)
    assert OmegaConf.is_interpolation(raw.gallery, "dir")


@pytest.mark.parametrize("overrides, message", [
    (["search.nope=1"], "search.nope"), (["k"], "key=value overrides, got \\['k'\\]"), (["+experiment=nope"], "nope")])
def test_bad_overrides_name_themselves(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_config("serving" if "+experiment=nope" not in overrides else "train", overrides)
