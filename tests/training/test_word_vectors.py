"""HER's word vectors: GloVe files, PPMI + SVD of tag co-occurrence, caching."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.shards import make_shards, vocabulary

from common.metrics import TagSets
from training.data.word_vectors import (build_word_vectors, cooccurrence_counts, cooccurrence_vectors,
                                        load_glove, ppmi)


def test_cooccurrence_counts_and_ppmi_match_brute_force():
    rows = [[0, 1], [0, 1, 2], [2, 3], [1], [0, 3]]
    counts = cooccurrence_counts(TagSets.from_lists(rows), 4, chunk_rows=2).toarray()
    ref = np.zeros((4, 4))
    for r in rows:
        for a in r:
            for b in r:
                if a != b:
                    ref[a, b] += 1
    np.testing.assert_array_equal(counts, ref)
    m = ppmi(cooccurrence_counts(TagSets.from_lists(rows), 4), smoothing=1.0).toarray()
    total = ref.sum()
    with np.errstate(divide="ignore"):
        pmi = np.log(ref * total / np.outer(ref.sum(1), ref.sum(0)))
    np.testing.assert_allclose(m, np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0), rtol=1e-12)


def test_cooccurrence_vectors_group_tags_that_occur_together():
    rng = np.random.default_rng(0)
    # Two topics: tags 0-4 co-occur, tags 5-9 co-occur; tag 10 never co-occurs.
    rows = [list(rng.choice(5, 3, replace=False) + 5 * (i % 2)) for i in range(400)] + [[10]]
    vec = cooccurrence_vectors(TagSets.from_lists(rows), 11, dim=8, seed=1)
    assert vec.shape == (11, 8)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-5)
    sim = vec @ vec.T
    within = np.mean([sim[a, b] for a in range(5) for b in range(5) if a != b])
    across = np.mean([sim[a, b] for a in range(5) for b in range(5, 10)])
    assert within > across + 0.3
    # Large vocabularies go through sparse truncated SVD: same behaviour.
    big = cooccurrence_vectors(TagSets.from_lists(rows), 2500, dim=8, seed=1)
    assert np.mean([big[a] @ big[b] for a in range(5) for b in range(5) if a != b]) > \
        np.mean([big[a] @ big[b] for a in range(5) for b in range(5, 10)]) + 0.3


def test_glove_file_and_cache(tmp_path):
    shards = tmp_path / "shards"
    make_shards(shards, rows={"train": 30, "val": 8, "test": 8})
    tags = vocabulary()
    glove = tmp_path / "glove.txt"
    glove.write_text(f"{tags[0]} 1 0 0\n{tags[2]} 0 1 0\nnot in vocab 1 1 1\nnew york 0 0 1\n")
    vec = load_glove(glove, tags, 3)
    assert vec[0].tolist() == [1, 0, 0] and vec[2].tolist() == [0, 1, 0] and not vec[1].any()
    a = build_word_vectors(str(shards), dim=3, glove_path=str(glove), cache_dir=str(tmp_path / "c"))
    assert a.shape == (len(tags), 3)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
    b = build_word_vectors(str(shards), dim=16, cache_dir=str(tmp_path / "c"))  # PPMI: another key
    assert b.shape == (len(tags), 16) and len(list((tmp_path / "c").glob("*.npy"))) == 2
    c = build_word_vectors(str(shards), dim=16, cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(b.numpy(), c.numpy())
    with pytest.raises(FileNotFoundError):
        build_word_vectors(str(tmp_path / "nowhere"), dim=3)
