"""LightGBM's bins: tfidf_lgbm cuts each TF-IDF column into params.max_bin bins while the dense pair
features (lengths, overlaps, cosines) keep LightGBM's 255, and a kind whose max_bin holds LightGBM's
default keeps the fingerprint it had before the param existed."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import tiny_pairs
from pipeline import tasks
from pipeline.data import Split, Table
from pipeline.models.base import FitContext
from pipeline.models.classical import TfidfLGBM
from pipeline.models.params import LGBM_DEFAULT_BINS, PairLGBMParams, TfidfLGBMParams, as_dict


def split(n: int, seed: int, pair: bool = True) -> Split:
    """Texts whose label follows, with noise, how often "yes" occurs: its TF-IDF column and the
    pair's length features take many values, and fitting the noise uses many cut points."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 12, n)
    y = (k + rng.integers(-3, 4, n) >= 6).astype(np.int64)
    words = tiny_pairs(n, seed).text_a.str.lower()
    a = [f"{w} {' '.join(['yes'] * int(j))}" for w, j in zip(words, k)]
    b = list(words) if pair else None
    table = Table(f"t{seed}", [f"r{i}" for i in range(n)], {"raw": (a, b), "lower": (a, b), "lemma": (a, b)}, y)
    return Split([(table, np.arange(n))], y)


def fitted(params, pair: bool = True) -> TfidfLGBM:
    ctx = FitContext(n_classes=2, seed=0, fold=0, out_dir=None, score=lambda y, p: 0.0, progress=False,
                     task=tasks.CLASSIFICATION)
    return TfidfLGBM(params, 2, "lower").fit(split(240, 0, pair), split(40, 1, pair), ctx)


def thresholds(model) -> dict[int, set[float]]:
    """{feature index: the distinct split thresholds the booster uses on it}."""
    out: dict[int, set[float]] = {}

    def walk(node):
        if "split_feature" in node:
            out.setdefault(node["split_feature"], set()).add(node["threshold"])
            walk(node["left_child"]), walk(node["right_child"])

    for tree in model.estimator_.booster_.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


PARAMS = dict(n_estimators=60, learning_rate=0.3, min_child_samples=2, colsample_bytree=1.0, min_df=1, n_jobs=1)


@pytest.mark.parametrize("max_bin", [3, 7])
def test_tfidf_columns_are_cut_into_max_bin_bins(max_bin):
    model = fitted(TfidfLGBMParams(max_bin=max_bin, **PARAMS), pair=False)
    assert model.bins_ == [max_bin] * len(model.bins_)
    cuts = [len(v) for v in thresholds(model).values()]
    assert cuts and max(cuts) <= max_bin - 1, "a TF-IDF column was cut at more than max_bin - 1 points"
    wide = fitted(TfidfLGBMParams(max_bin=LGBM_DEFAULT_BINS, **PARAMS), pair=False)
    assert max(len(v) for v in thresholds(wide).values()) > max_bin - 1, "the data cannot tell the bins apart"


def test_dense_pair_features_keep_lightgbm_default_bins():
    model = fitted(TfidfLGBMParams(max_bin=3, **PARAMS))
    dense = model.bins_.count(LGBM_DEFAULT_BINS)
    assert dense > 0 and model.bins_ == [LGBM_DEFAULT_BINS] * dense + [3] * (len(model.bins_) - dense)
    dense_cuts = [len(v) for f, v in thresholds(model).items() if f < dense]
    assert max(dense_cuts) > 2, "the dense features lost their resolution"


def test_max_bin_changes_the_predictions():
    X = split(40, 2)
    p7, p255 = (fitted(TfidfLGBMParams(max_bin=b, **PARAMS)).predict_proba(X) for b in (7, 255))
    assert not np.allclose(p7, p255)


def params_dict(params) -> dict:
    """The params as a loaded config holds them (as_dict: QUIET fields at their default left out)."""
    return as_dict(params)


def test_lightgbm_default_bins_leave_pair_lgbm_params_as_before():
    before = {k: v for k, v in dataclasses.asdict(PairLGBMParams()).items() if k != "max_bin"}
    assert params_dict(PairLGBMParams()) == before
    assert params_dict(PairLGBMParams(max_bin=63))["max_bin"] == 63
    # tfidf_lgbm's default is not LightGBM's: its models from before the param existed are stale
    assert params_dict(TfidfLGBMParams())["max_bin"] == TfidfLGBMParams().max_bin < LGBM_DEFAULT_BINS


def test_pair_lgbm_passes_max_bin_to_lightgbm():
    est = tasks.CLASSIFICATION.booster(PairLGBMParams(max_bin=31), 0)
    assert est.get_params()["max_bin"] == 31 and "max_bin_by_feature" not in est.get_params()
