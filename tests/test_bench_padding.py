"""bench/padding.py counts the padding of the trainer's batches right."""
from __future__ import annotations

import numpy as np
import pytest

from bench import padding


def test_padding_shares_count_real_tokens_over_computed_ones():
    assert padding.shares(np.full(40, 16), 8) == {"trainer": 1.0, "length_buckets": 1.0, "random_rows": 1.0}
    s = padding.shares(np.full(40, 17), 8)   # padded to 24: PAD_MULTIPLE 8, and the bucket after 16
    assert s["trainer"] == pytest.approx(17 / 24) == s["length_buckets"]
    s = padding.shares(np.full(40, 33), 8)   # 40 against the bucket 48
    assert s["trainer"] == pytest.approx(33 / 40) and s["length_buckets"] == pytest.approx(33 / 48)
    mixed = padding.shares(np.tile([8, 64], 40), 8)   # length-sorted batches pad nothing, random rows do
    assert mixed["trainer"] == pytest.approx(1.0) and mixed["random_rows"] < 0.7
