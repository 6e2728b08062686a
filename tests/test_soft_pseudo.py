"""Soft pseudo labels (pseudo.soft): each chosen test row enters fold k's training part once per
class, weighted by fold k's teachers' mean probability of that class; the selection is the hard one."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

import spy_model
from pipeline.config import load_config
from pipeline.data import Split, whole
from pipeline.fileio import read_json, sha256_file
from pipeline.models import registry
from pipeline.models.base import FitContext
from pipeline.models.classical import PairLGBM, TfidfLR
from pipeline.models.params import PairLGBMParams, TfidfLRParams
from pipeline.pseudo_labels import CSV_COLUMNS
from pipeline.fold_assignment import load_folds
from pipeline.prepared import load_prepared
from pipeline.tasks import PerLabel

PSEUDO = {"enabled": True, "rounds": 1, "min_confidence": 0.5, "max_fraction": 1.0, "keep_class_balance": False}


@pytest.fixture
def spies(prepared, monkeypatch):
    """Two spy teachers (raw and lemma views: different predictions) trained on round 0."""
    monkeypatch.setitem(registry.KINDS, "spy", registry.Kind(spy_model.SpyParams, "spy_model:SpyModel"))
    cfg = yaml.safe_load(prepared.config.read_text())
    cfg["models"] = [{"name": "s1", "kind": "spy", "view": "raw"}, {"name": "s2", "kind": "spy", "view": "lemma"}]
    cfg["pseudo"] = PSEUDO
    cfg["ensemble"] = {"methods": ["blend"], "submit": "blend"}
    prepared.write_config(cfg)
    assert prepared.run("train") == 0
    spy_model.CALLS.clear()
    return prepared


def pseudo_csv(e) -> pd.DataFrame:
    return pd.read_csv(e.tmp / "work" / "tiny" / "pseudo" / "r1.csv", dtype={"label": str})


def test_soft_rows_once_per_class_weighted_by_fold_k_teachers(spies):
    assert spies.run("pseudo_label", "pseudo.soft=true") == 0
    cfg = load_config(spies.config)
    train, _, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    df = pseudo_csv(spies)
    assert list(df.columns) == CSV_COLUMNS + ["p_0", "p_1"]
    teachers = [np.load(spies.models / name / "test_folds.npy") for name in ("s1", "s2")]
    calls = [c for c in spy_model.CALLS if "rounds/r1/" in c["dir"]]
    assert sorted((c["dir"].split("/")[-2], c["fold"]) for c in calls) == [(m, k) for m in ("s1", "s2")
                                                                          for k in range(3)]
    for c in calls:
        k = c["fold"]
        mean = np.mean([t[k].astype(np.float64) for t in teachers], axis=0)   # (n_test, 2) the soft labels
        mine = df[df["fold"] == k]
        assert len(mine) > 3  # something to check below
        np.testing.assert_allclose(mine[["p_0", "p_1"]], mean[mine["test_row"]], atol=1e-6)
        assert c["valid"] == {("train", int(i)) for i in np.flatnonzero(folds == k)}  # never in validation
        w = c["train_weight"]
        assert w is not None and len(w) == len(c["train_keys"]) == len(c["train_y"])
        pseudo = {}
        for key, y, weight in zip(c["train_keys"], c["train_y"], w):
            if key[0] == "test":
                pseudo.setdefault(key[1], {})[int(y)] = weight
            else:
                assert weight == 1.0
        assert sorted(pseudo) == sorted(mine["test_row"])
        for row, by_class in pseudo.items():
            assert sorted(by_class) == [0, 1]  # once per class
            np.testing.assert_allclose([by_class[0], by_class[1]], mean[row], rtol=1e-12)
            assert by_class[0] + by_class[1] == pytest.approx(1.0, abs=1e-6)
        n_train = int((folds != k).sum())
        assert len(c["train_keys"]) == n_train + 2 * len(mine)


def test_soft_keeps_the_selection_and_changes_the_fingerprint(spies):
    assert spies.run("pseudo_label") == 0
    hard = pseudo_csv(spies)
    hard_manifest = read_json(spies.models / "rounds" / "r1" / "s1" / "manifest.json")
    assert list(hard.columns) == CSV_COLUMNS
    assert all(c["train_weight"] is None for c in spy_model.CALLS)  # hard: no weights at all
    assert "soft" not in read_json(spies.tmp / "work" / "tiny" / "pseudo" / "r1.json")
    assert spies.run("pseudo_label", "pseudo.soft=true") == 0
    soft = pseudo_csv(spies)
    pd.testing.assert_frame_equal(soft[CSV_COLUMNS], hard)  # the same rows, labels, votes and confidence
    manifest = read_json(spies.models / "rounds" / "r1" / "s1" / "manifest.json")
    assert manifest["pseudo_labels_sha256"] == sha256_file(spies.tmp / "work" / "tiny" / "pseudo" / "r1.csv")
    assert manifest["pseudo_labels_sha256"] != hard_manifest["pseudo_labels_sha256"]
    assert manifest["config_sha256"] != hard_manifest["config_sha256"]
    assert read_json(spies.tmp / "work" / "tiny" / "pseudo" / "r1.json")["soft"] is True


def test_soft_through_the_classical_models(prepared):
    """tfidf_lr and pair_lgbm students train on the weighted rows end to end."""
    cfg = yaml.safe_load(prepared.config.read_text())
    cfg["pseudo"] = {**PSEUDO, "min_confidence": 0.6}
    cfg["ensemble"] = {"methods": ["blend"], "submit": "blend"}
    prepared.write_config(cfg)
    assert prepared.run("train") == 0
    assert prepared.run("pseudo_label", "pseudo.soft=true") == 0
    assert len(pseudo_csv(prepared)) > 0
    for name in ("lr", "plgbm"):
        assert np.isfinite(np.load(prepared.models / "rounds" / "r1" / name / "oof.npy")).all()


# ----------------------------------------------------------------------------- the models honour the weights


def fit(model, split: Split, table):
    ctx = FitContext(n_classes=2, seed=3, fold=0, out_dir=table, score=lambda y, p: 0.0, cache={})
    return model.fit(split, split, ctx)


@pytest.fixture
def weighted(prepared):
    """The prepared train table and a Split over it with random weights in (0, 1]."""
    train, _, _ = load_prepared(load_config(prepared.config))
    w = np.random.default_rng(0).uniform(0.05, 1.0, len(train))
    return train, Split([(train, np.arange(len(train)))], train.y, name="w", sample_weight=w), w


def test_tfidf_lr_fits_with_the_sample_weights(weighted, tmp_path):
    train, split, w = weighted
    model = fit(TfidfLR(TfidfLRParams(min_df=1), 2, "lower"), split, tmp_path)
    X = model._design(split, fit=False)
    direct = LogisticRegression(C=model.params.C, max_iter=model.params.max_iter, random_state=3)
    direct.fit(X, train.y, sample_weight=w)
    np.testing.assert_allclose(model.estimator_.coef_, direct.coef_, rtol=1e-6, atol=1e-8)
    plain = fit(TfidfLR(TfidfLRParams(min_df=1), 2, "lower"), whole(train), tmp_path)
    assert not np.allclose(plain.estimator_.coef_, model.estimator_.coef_)


def test_pair_lgbm_fits_with_the_sample_weights(weighted, tmp_path):
    train, split, w = weighted
    params = PairLGBMParams(n_estimators=10, n_jobs=1)
    a = fit(PairLGBM(params, 2, "raw"), split, tmp_path).predict_proba(whole(train))
    b = fit(PairLGBM(params, 2, "raw"), whole(train), tmp_path).predict_proba(whole(train))
    assert not np.allclose(a, b)


def test_per_label_passes_the_weights_to_every_label():
    rng = np.random.default_rng(1)
    X, Y, w = rng.normal(size=(40, 3)), rng.integers(0, 2, (40, 2)), rng.uniform(0.1, 1.0, 40)
    est = PerLabel(lambda: LogisticRegression()).fit(X, Y, sample_weight=w)
    for j in range(2):
        np.testing.assert_allclose(est.estimators_[j].coef_, LogisticRegression().fit(X, Y[:, j], w).coef_)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("override", [["task=regression", "metric=rmse"], ["task=multilabel", "metric=roc_auc"]])
def test_soft_needs_classification(prepared, capsys, override):
    assert prepared.run("pseudo_label", *override, "pseudo.soft=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pseudo.soft=true needs task: classification" in err[0]


def test_soft_must_be_a_bool(prepared, capsys):
    assert prepared.run("pseudo_label", "pseudo.soft=maybe") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pseudo.soft" in err[0]
