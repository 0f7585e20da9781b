"""The vectorised MD5 agrees with hashlib on every length, across block boundaries."""
import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.synth.md5 import encode_ascii, md5_many


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=20))
def test_md5_many_matches_hashlib(messages):
    width = max(1, max(len(m) for m in messages))
    mat = np.zeros((len(messages), width), dtype=np.uint8)
    for i, m in enumerate(messages):
        mat[i, :len(m)] = np.frombuffer(m, dtype=np.uint8)
    lengths = np.array([len(m) for m in messages])
    digests = md5_many(mat, lengths)
    assert [bytes(d) for d in digests] == [hashlib.md5(m).digest() for m in messages]


def test_encode_ascii_round_trip():
    urls = ["http://farm1.staticflickr.com/1/2_abc.jpg", "", "x" * 120]
    mat, lengths = encode_ascii(urls)
    digests = md5_many(mat, lengths)
    assert [bytes(d) for d in digests] == [hashlib.md5(u.encode()).digest() for u in urls]
