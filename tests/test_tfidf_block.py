"""TfidfBlock.fit_transform (each training text analysed once) gives the matrices the fitted block's
transform gives, bit for bit, so the TF-IDF kinds' outputs do not depend on which path ran."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import tiny_pairs
from pipeline.models.features import TfidfBlock, sides
from pipeline.models.params import TfidfLRParams


def texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    df = tiny_pairs(n, seed)
    # varied lengths and repeats: sublinear tf and the L2 norm see many different rows
    a = [f"{t} {' '.join(['rose'] * (i % 5))} {i % 7}" for i, t in enumerate(df.text_a)]
    return a, list(df.text_b)


def same(x: sp.csr_matrix, y: sp.csr_matrix) -> bool:
    return (x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x.indptr, y.indptr)
            and np.array_equal(x.indices, y.indices) and np.array_equal(x.data, y.data))


@pytest.mark.parametrize("params", [TfidfLRParams(min_df=1), TfidfLRParams(min_df=2, max_features=40),
                                    TfidfLRParams(word_ngrams=[], char_ngrams=[1, 3])])
def test_fit_transform_equals_the_fitted_blocks_transform(params):
    a, b = texts(120, 0)
    fitted = TfidfBlock(params)
    once = fitted.fit_transform(a + b)
    assert len(once) == len(fitted.transform(a + b))
    assert all(same(x, y) for x, y in zip(once, fitted.transform(a + b)))


def test_sides_of_a_fit_equal_the_sides_of_a_transform():
    a, b = texts(80, 1)
    block = TfidfBlock(TfidfLRParams(min_df=1))
    va, vb = sides(block, a, b, fit=True)
    ta, tb = sides(block, a, b, fit=False)
    assert all(same(x, y) for x, y in zip(va + vb, ta + tb))
    single, none = sides(TfidfBlock(TfidfLRParams(min_df=1)), a, None, fit=True)
    assert none is None and single[0].shape[0] == len(a)


def test_an_analyzer_that_learns_nothing_gives_an_empty_block_where_allowed():
    block = TfidfBlock(TfidfLRParams(min_df=1), allow_empty=True)
    out = block.fit_transform(["!!!", "???"])   # no word characters: the word analyzer learns nothing
    assert out[0].shape == (2, 0) and out[1].shape[0] == 2
    assert same(out[0], block.transform(["!!!", "???"])[0])
