"""Task types: regression and multilabel end to end, the metrics against scikit-learn/scipy, folds
per task, honest stacking and cut-points, label reading, config checks."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (cohen_kappa_score, f1_score, log_loss, matthews_corrcoef, mean_absolute_error,
                             mean_squared_error, roc_auc_score)

from conftest import Exp, base_config, tiny_bert
from pipeline import metrics as M
from pipeline import tasks
from pipeline.config import load_config
from pipeline.combination import honest_oof
from pipeline.errors import PipelineError
from pipeline.fileio import read_json

FIN, SPORT, POL = ["stock", "market", "bank", "profit"], ["team", "game", "win", "goal"], ["vote", "court", "council", "law"]
FILLER = ["city", "plan", "day", "report", "people", "new", "said", "year"]
VOCAB = sorted(set(FIN + SPORT + POL + FILLER))


# ----------------------------------------------------------------------------- data


def regression_pairs(n: int, seed: int) -> pd.DataFrame:
    """Pairs scored 0..5: the number of a's first five words that b repeats (integer targets)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = [rng.choice(VOCAB) for _ in range(6)]
        m = i % 6
        b = a[:m] + [rng.choice(VOCAB) for _ in range(6 - m)]
        rng.shuffle(b)
        rows.append({"id": f"r{i}", "text_a": " ".join(a), "text_b": " ".join(b), "score": m})
    return pd.DataFrame(rows)


def multilabel_texts(n: int, seed: int) -> pd.DataFrame:
    """Single texts with three 0/1 labels: does the text mention finance, sport, politics."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(4)]
        labels = {}
        for name, group in (("finance", FIN), ("sport", SPORT), ("politics", POL)):
            labels[name] = int(rng.random() < 0.4)
            words += [rng.choice(group)] * labels[name]
        rng.shuffle(words)
        rows.append({"id": f"t{i}", "text": " ".join(words), **labels})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A 1-layer, 32-wide random BERT with a WordPiece vocabulary of this file's words."""
    return tiny_bert(tmp_path_factory.mktemp("bert"), VOCAB)


def transformer(bert_dir: Path) -> dict:
    return {"name": "bert", "kind": "transformer", "view": "lower",
            "params": {"backbone": str(bert_dir), "max_length": 32, "epochs": 2, "batch_size": 16, "lr": 1e-3,
                       "head_lr": 1e-2, "warmup": 0.0, "precision": "fp32", "num_threads": 1, "patience": 0,
                       "save_checkpoint": False}}


def experiment(tmp: Path, train: pd.DataFrame, test: pd.DataFrame, **cfg_changes) -> Exp:
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    train.to_csv(tmp / "in" / "train.csv", index=False)
    test.to_csv(tmp / "in" / "test.csv", index=False)
    cfg = {**base_config(tmp), "metric": None}   # None: the task's default metric
    for key, value in cfg_changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    e = Exp(tmp, tmp / "tiny.yaml")
    e.write_config(cfg)
    return e


CLASSICAL = [{"name": "lr", "kind": "tfidf_lr", "view": "lower", "params": {"min_df": 1}},
             {"name": "lgbm", "kind": "tfidf_lgbm", "view": "lower",
              "params": {"n_estimators": 30, "n_jobs": 1, "min_df": 1, "min_child_samples": 3}}]
ENSEMBLE = {"methods": ["stack", "blend", "vote", "best"], "submit": "auto"}
PSEUDO = {"enabled": True, "rounds": 1, "min_confidence": 0.5, "max_fraction": 0.3}


def run_all(e: Exp, *stages: str) -> None:
    for stage in stages or ("preprocess", "folds", "train", "pseudo_label", "ensemble", "report"):
        assert e.run(stage) == 0, stage


def check_matrices(e: Exp, names: list[str], n_outputs: int, task: str) -> None:
    for name in names:
        d = e.models / name
        oof, test = np.load(d / "oof.npy"), np.load(d / "test.npy")
        assert oof.dtype == np.float32 and oof.shape[1] == n_outputs and test.shape[1] == n_outputs
        manifest = read_json(d / "manifest.json")
        assert manifest["task"] == task and manifest["n_classes"] == n_outputs


# ----------------------------------------------------------------------------- end to end


def test_regression_end_to_end(tmp_path, bert_dir):
    train, test = regression_pairs(120, 0), regression_pairs(40, 1).drop(columns=["score"])
    e = experiment(tmp_path, train, test, task="regression", metric="rmse",
                   data={"label": "score"}, models=CLASSICAL + [transformer(bert_dir)],
                   ensemble=ENSEMBLE, pseudo=PSEUDO)
    run_all(e)
    check_matrices(e, ["lr", "lgbm", "bert"], 1, "regression")
    summary = read_json(e.models / "ensembles" / "summary.json")
    assert summary["task"] == "regression"
    stack = summary["methods"]["stack"]["oof_scores"]
    assert stack["pearson"] > 0.5 and stack["rmse"] < float(train["score"].std())
    sub = pd.read_csv(tmp_path / "subs" / "tiny.csv")
    assert sub.columns.tolist() == ["id", "score"] and sub["id"].tolist() == test["id"].tolist()
    assert sub["score"].dtype == float
    assert (tmp_path / "work" / "tiny" / "pseudo" / "r1.csv").is_file()
    report = tmp_path / "reports" / "tiny"
    assert (report / "scatter.png").is_file() and (report / "residuals.png").is_file()
    assert not (report / "confusion.png").exists()
    assert "oof rmse" in (report / "report.md").read_text()
    from conftest import stage_main

    assert stage_main("inspect_models")([str(e.models), "--labels", str(tmp_path / "work" / "tiny" / "prepared" / "train.jsonl"),
                         "--metric", "rmse"]) == 0


def test_multilabel_end_to_end(tmp_path, bert_dir):
    train, test = multilabel_texts(120, 0), multilabel_texts(40, 1)
    labels = ["finance", "sport", "politics"]
    e = experiment(tmp_path, train, test.drop(columns=labels), task="multilabel", metric="roc_auc",
                   data={"label": labels, "text_a": "text", "text_b": None},
                   models=CLASSICAL + [transformer(bert_dir)], ensemble=ENSEMBLE, pseudo=PSEUDO)
    run_all(e)
    check_matrices(e, ["lr", "lgbm", "bert"], 3, "multilabel")
    assert read_json(e.tmp / "work" / "tiny" / "prepared" / "meta.json")["classes"] == labels
    summary = read_json(e.models / "ensembles" / "summary.json")
    assert summary["methods"]["stack"]["oof_scores"]["roc_auc"] > 0.8
    sub = pd.read_csv(tmp_path / "subs" / "tiny.csv")
    assert sub.columns.tolist() == ["id"] + labels
    assert set(np.unique(sub[labels].to_numpy())) <= {0, 1}
    assert (tmp_path / "reports" / "tiny" / "labels.png").is_file()
    assert (tmp_path / "models" / "tiny" / "lgbm" / "fold0" / "booster_0.txt").is_file()


def test_qwk_with_a_test_file_of_non_ratings_reports_without_its_test_qwk(tmp_path):
    """metric qwk, a labelled test file whose labels are no ratings (fractions): the test scores
    have no qwk, and the pseudo-label stage and the report show '-' for it instead of failing."""
    train, test = regression_pairs(120, 0), regression_pairs(40, 1)
    e = experiment(tmp_path, train, test.assign(score=test["score"] + 0.25), task="regression", metric="qwk",
                   data={"label": "score", "test_label": "score"}, models=CLASSICAL, ensemble=ENSEMBLE,
                   pseudo=PSEUDO)
    run_all(e)
    assert (tmp_path / "reports" / "tiny" / "pseudo_rounds.png").is_file()


def test_qwk_cut_points_are_fitted_on_oof_only(tmp_path):
    """Two runs that differ only in the test file's labels: same cut-points, same submission."""
    train, test = regression_pairs(120, 0), regression_pairs(40, 1)
    outputs = []
    for i, shift in enumerate((0, 3)):
        t = test.assign(score=(test["score"] + shift) % 6)
        e = experiment(tmp_path / f"run{i}", train, t, task="regression", metric="qwk",
                       data={"label": "score", "test_label": "score"}, models=CLASSICAL, ensemble=ENSEMBLE)
        run_all(e, "preprocess", "folds", "train", "ensemble")
        summary = read_json(e.models / "ensembles" / "summary.json")
        cuts = {m: s["threshold"] for m, s in summary["methods"].items()}
        outputs.append((cuts, (e.tmp / "subs" / "tiny.csv").read_bytes(), summary["methods"]["stack"]["test"]["qwk"]))
    assert outputs[0][0] == outputs[1][0] and outputs[0][1] == outputs[1][1]
    assert outputs[0][2] != outputs[1][2]   # the test labels did change: only the test score moved
    assert all(t is not None and len(t["cuts"]) == 5 for t in outputs[0][0].values())


# ----------------------------------------------------------------------------- folds


def test_regression_folds_are_balanced_across_target_quantiles():
    rng = np.random.default_rng(0)
    y = rng.lognormal(size=500)
    fold = tasks.get("regression").assign_folds(y, 5, 1, None, ["y"])
    bins = np.digitize(y, np.quantile(y, [0.2, 0.4, 0.6, 0.8]))
    counts = np.array([[np.sum((fold == k) & (bins == b)) for b in range(5)] for k in range(5)])
    assert counts.min() >= 18 and counts.max() <= 22   # 20 expected per fold and quintile
    assert np.bincount(fold).tolist() == [100] * 5


def test_multilabel_folds_keep_each_labels_share():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 4)) < [0.5, 0.2, 0.1, 0.05]).astype(np.int64)
    fold = tasks.get("multilabel").assign_folds(y, 3, 1, None, list("abcd"))
    for j in range(4):
        per_fold = [y[fold == k, j].sum() for k in range(3)]
        assert max(per_fold) - min(per_fold) <= 2


def test_classification_folds_unchanged_by_the_task_object():
    from sklearn.model_selection import StratifiedKFold

    y = np.arange(90) % 3
    expected = np.zeros(90, dtype=np.int64)
    for k, (_, va) in enumerate(StratifiedKFold(3, shuffle=True, random_state=4).split(np.zeros(90), y)):
        expected[va] = k
    assert tasks.get("classification").assign_folds(y, 3, 4, None, ["0", "1", "2"]).tolist() == expected.tolist()


# ----------------------------------------------------------------------------- ensemble


def task_data(name: str, n: int = 300):
    rng = np.random.default_rng(3)
    if name == "classification":
        y = rng.integers(0, 3, n)
        mats = [rng.dirichlet([1, 1, 1], n) for _ in range(2)]
        flip = lambda v: (v + 1) % 3  # noqa: E731
    elif name == "regression":
        y = rng.normal(size=n)
        mats = [(y + rng.normal(scale=s, size=n))[:, None] for s in (0.5, 1.0)]
        flip = lambda v: -v  # noqa: E731
    else:
        y = (rng.random((n, 3)) < 0.4).astype(np.int64)
        mats = [np.clip(0.6 * y + 0.4 * rng.random((n, 3)), 0, 1) for _ in range(2)]
        flip = lambda v: 1 - v  # noqa: E731
    return y, mats, flip


@pytest.mark.parametrize("name", ["classification", "regression", "multilabel"])
@pytest.mark.parametrize("method", ["stack", "blend", "best", "select", "rank"])
def test_ensemble_oof_is_honest_for_every_task(name, method):
    """A method's OOF rows of fold k must not change when fold k's own labels change."""
    task = tasks.get(name)
    y, mats, flip = task_data(name)
    folds = np.arange(len(y)) % 3
    factory = task.method(method, 1.0, 0, task.default_metric)
    base = honest_oof(factory, mats, y, folds)
    y2 = y.copy()
    y2[folds == 0] = flip(y2[folds == 0])
    again = honest_oof(factory, mats, y2, folds)
    np.testing.assert_allclose(base[folds == 0], again[folds == 0])
    assert base.shape == mats[0].shape


def test_regression_and_multilabel_combiners():
    rt = tasks.get("regression")
    y, mats, _ = task_data("regression")
    blend = rt.method("blend", 1.0, 0, "rmse")().fit(mats, y)
    assert np.isclose(blend.weights_.sum(), 1) and blend.weights_[0] > blend.weights_[1]
    assert rt.method("vote", 1.0, 0, "rmse")().predict_proba(mats + [mats[0] * 0]).shape == (300, 1)
    mt = tasks.get("multilabel")
    a = np.array([[0.9, 0.2], [0.6, 0.4]])
    b = np.array([[0.3, 0.1], [0.4, 0.6]])
    c = np.array([[0.8, 0.7], [0.45, 0.9]])
    vote = mt.method("vote", 1.0, 0, "roc_auc")().predict_proba([a, b, c])
    assert (vote >= 0.5).astype(int).tolist() == [[1, 0], [0, 1]]
    tie = mt.method("vote", 1.0, 0, "roc_auc")().predict_proba([a, b])  # 1 of 2 votes: mean probability decides
    assert (tie >= 0.5).astype(int).tolist() == [[1, 0], [1, 1]]


def test_cut_points_beat_rounding_on_biased_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    p = 0.6 * y + 0.2 + rng.normal(scale=0.3, size=400)   # shrunk: rounding under-predicts high ratings
    cuts = M.fit_cuts(y, p)
    assert M.qwk(y, M.cut(p, cuts, 0, 4)) > M.qwk(y, M.cut(p, None, 0, 4))
    assert cuts == sorted(cuts)


# ----------------------------------------------------------------------------- metrics


def test_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(7)
    n = 200
    y = rng.integers(0, 2, n)
    proba = rng.dirichlet([1, 1], n)
    s = M.scores(y, proba)
    pred = proba.argmax(1)
    assert np.isclose(s["mcc"], matthews_corrcoef(y, pred))
    assert np.isclose(s["roc_auc"], roc_auc_score(y, proba[:, 1]))
    y3, p3 = rng.integers(0, 3, n), rng.dirichlet([1, 1, 1], n)
    assert np.isclose(M.scores(y3, p3)["roc_auc"], roc_auc_score(y3, p3, multi_class="ovr"))

    t = rng.normal(size=n)
    v = t + rng.normal(size=n)
    r = M.regression_scores(t, v[:, None])
    assert np.isclose(r["rmse"], np.sqrt(mean_squared_error(t, v)))
    assert np.isclose(r["mae"], mean_absolute_error(t, v))
    assert np.isclose(r["pearson"], pearsonr(t, v)[0]) and np.isclose(r["spearman"], spearmanr(t, v)[0])
    assert "qwk" not in r
    ti = rng.integers(1, 6, n)
    vi = ti + rng.normal(scale=1.0, size=n)
    expected = cohen_kappa_score(ti, np.clip(np.rint(vi), 1, 5).astype(int), weights="quadratic")
    assert np.isclose(M.regression_scores(ti.astype(float), vi[:, None])["qwk"], expected)
    a, b = rng.integers(0, 7, n), rng.integers(0, 7, n)
    assert np.isclose(M.qwk(a, b), cohen_kappa_score(a, b, weights="quadratic"))

    Y = (rng.random((n, 4)) < 0.3).astype(int)
    P = np.clip(0.5 * Y + 0.5 * rng.random((n, 4)), 0.01, 0.99)
    ml = M.multilabel_scores(Y, P)
    D = (P >= 0.5).astype(int)
    assert np.isclose(ml["roc_auc"], np.mean([roc_auc_score(Y[:, j], P[:, j]) for j in range(4)]))
    assert np.isclose(ml["roc_auc"], roc_auc_score(Y, P, average="macro"))
    assert np.isclose(ml["logloss"], np.mean([log_loss(Y[:, j], P[:, j]) for j in range(4)]))
    assert np.isclose(ml["f1"], f1_score(Y, D, average="micro"))
    assert np.isclose(ml["macro_f1"], f1_score(Y, D, average="macro"))
    assert np.isclose(ml["mcc"], matthews_corrcoef(Y.ravel(), D.ravel()))


def test_score_directions():
    assert all(M.signed(m, 1.0) == -1.0 for m in ("rmse", "mae", "logloss"))
    assert all(M.signed(m, 1.0) == 1.0 for m in ("qwk", "pearson", "spearman", "mcc", "roc_auc"))
    rt = tasks.get("regression")
    y = np.arange(10.0)
    good, bad = (y + 0.1)[:, None], (y[::-1])[:, None]
    assert rt.score("rmse", y, good) > rt.score("rmse", y, bad)
    best = rt.method("best", 1.0, 0, "rmse")().fit([bad, good], y)
    assert best.index_ == 1


# ----------------------------------------------------------------------------- labels and config


def test_config_refuses_a_metric_the_task_does_not_accept(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: regression\nmetric: accuracy\n")
    with pytest.raises(PipelineError, match=r"metric='accuracy' is not a regression metric.*rmse"):
        load_config(path)
    assert load_config(path, ["metric=null"]).metric == "rmse"
    with pytest.raises(PipelineError, match="data.label is a list of columns, which needs task: multilabel"):
        load_config(None, ["data.label=[a, b]"])
    with pytest.raises(PipelineError, match="task multilabel needs data.label to be a list"):
        load_config(None, ["task=multilabel"])
    with pytest.raises(PipelineError, match="config: task must be one of"):
        load_config(None, ["task=ranking"])
    assert load_config(None, ["task=multilabel", "data.label=[a, b]"]).metric == "roc_auc"


def test_regression_labels_must_be_numbers(tmp_path, capsys):
    train = regression_pairs(30, 0).astype({"score": str})
    train.loc[4, "score"] = "n/a"
    e = experiment(tmp_path, train, regression_pairs(10, 1), task="regression", data={"label": "score"})
    assert e.run("preprocess") == 2
    assert "train.csv row 5: label 'n/a' in column 'score' is not a number" in capsys.readouterr().err
    train.loc[4, "score"] = "2.5"
    e = experiment(tmp_path, train, regression_pairs(10, 1), task="regression", metric="qwk", data={"label": "score"})
    assert e.run("preprocess") == 2
    assert "metric qwk needs integer targets" in capsys.readouterr().err
    e = experiment(tmp_path, train, regression_pairs(10, 1), task="regression", data={"label": "score"})
    assert e.run("preprocess") == 0


def test_float_labels_under_classification_suggest_regression(tmp_path, capsys):
    train = regression_pairs(60, 0)
    train["score"] = np.round(np.random.default_rng(0).random(60) * 5, 3)
    e = experiment(tmp_path, train, regression_pairs(10, 1), data={"label": "score"})
    assert e.run("preprocess") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set task: regression" in err[0]


def test_regression_label_error_names_the_row(tmp_path):
    task = tasks.get("regression")
    with pytest.raises(PipelineError, match=r"train.csv row 3: label 'x' in column 'score' is not a number"):
        task.encode(["1", "2.5", "x"], ["score"], "train.csv", "score")
    ml = tasks.get("multilabel")
    with pytest.raises(PipelineError, match=r"row 2: label '2' in column 'b' is not 0 or 1"):
        ml.encode([["0", "1"], ["1", "2"]], ["a", "b"], "train.csv", ["a", "b"])


def test_manifest_without_task_is_classification():
    from pipeline.artifacts import recorded

    assert recorded({}, "task") == "classification" and recorded({"task": "regression"}, "task") == "regression"
    assert tasks.get(None) is tasks.CLASSIFICATION


def test_models_of_different_tasks_are_refused(tmp_path):
    """A regression model dropped among classification ones: the ensemble names the two manifests."""
    train = regression_pairs(60, 0)
    e = experiment(tmp_path, train.assign(score=train["score"] % 2), regression_pairs(10, 1).drop(columns=["score"]),
                   data={"label": "score"}, models=CLASSICAL, ensemble=ENSEMBLE)
    run_all(e, "preprocess", "folds", "train")
    manifest_path = e.models / "lgbm" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["task"] = "regression"
    manifest_path.write_text(json.dumps(manifest))
    from pipeline.artifacts import check_agree, load_model

    models = [load_model(e.models / "lr"), load_model(e.models / "lgbm")]
    models[1].manifest["task"] = "regression"
    with pytest.raises(PipelineError, match="disagree on task"):
        check_agree(models, e.tmp / "folds.csv", {"folds_csv_sha256": models[0].manifest["folds_csv_sha256"],
                                                   "ids_sha256": models[0].manifest["train_ids_sha256"],
                                                   "labels_sha256": models[0].manifest["labels_sha256"]})


# ----------------------------------------------------------------------------- sample submission


def test_submission_follows_the_sample_submission(tmp_path, capsys):
    train, test = regression_pairs(60, 0), regression_pairs(20, 1).drop(columns=["score"])
    sample = pd.DataFrame({"prediction": 0.0, "id": test["id"][::-1]})
    (tmp_path / "in").mkdir()
    sample.to_csv(tmp_path / "in" / "sample.csv", index=False)
    e = experiment(tmp_path, train, test, task="regression", models=CLASSICAL[:1],
                   data={"label": "score", "sample_submission": "sample.csv"})
    run_all(e, "preprocess", "folds", "train", "ensemble")
    for name in ("tiny.csv", "tiny_stack.csv"):
        sub = pd.read_csv(tmp_path / "subs" / name)
        assert sub.columns.tolist() == ["prediction", "id"] and sub["id"].tolist() == sample["id"].tolist()
    before = (tmp_path / "subs" / "tiny.csv").read_bytes()
    sample.iloc[1:].assign(id=["zz"] + sample["id"].tolist()[2:]).to_csv(tmp_path / "in" / "sample.csv", index=False)
    capsys.readouterr()
    assert e.run("ensemble") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ from the test file's: 1 only in the sample ('zz'), 2 only in the test file" in err[0]
    assert (tmp_path / "subs" / "tiny.csv").read_bytes() == before


# ----------------------------------------------------------------------------- Chinese


ZH = ["我想知道花呗怎么还款", "借呗的额度为什么降低了", "花呗可以分期付款吗", "怎么关闭借呗", "蚂蚁借呗利息是多少",
      "花呗账单什么时候出", "我的花呗被冻结了", "借呗还款日期可以改吗"]


def chinese_pairs(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = rng.choice(ZH)
        b = a if i % 2 else rng.choice([z for z in ZH if z != a])
        rows.append({"id": f"z{i}", "text_a": a, "text_b": b, "label": i % 2})
    return pd.DataFrame(rows)


def test_chinese_text_is_segmented_and_recorded(tmp_path):
    from pipeline.prepared import load_prepared

    pair = {"name": "plgbm", "kind": "pair_lgbm", "view": "raw", "params": {"n_estimators": 20, "n_jobs": 1}}
    e = experiment(tmp_path, chinese_pairs(60, 0), chinese_pairs(12, 1).drop(columns=["label"]),
                   models=CLASSICAL[:1] + [pair])
    run_all(e, "preprocess", "folds", "train")
    cfg = load_config(e.config)
    train, _, meta = load_prepared(cfg)
    assert meta["segmenter"] == "jieba" and train.segmented   # pair features read the segmented words
    lower = train.views["lower"][0][0]
    assert " " in lower and lower.replace(" ", "") == train.views["raw"][0][0]
    assert "还款" in " ".join(train.views["lemma"][0]).split()
    vocab = json.loads((e.models / "lr" / "fold0" / "tfidf.json").read_text())[0]["vocabulary"]
    assert "还款" in vocab          # a word, not a whole sentence
    assert e.run("preprocess", "preprocess.segmenter=none") == 0
    _, _, meta = load_prepared(load_config(e.config, ["preprocess.segmenter=none"]))
    assert meta["segmenter"] == "none"


def test_english_text_is_not_segmented(tmp_path):
    from pipeline.views import han_share, make_segmenter

    assert make_segmenter("auto", ["the market rose", "shares fell 3%"])[0] == "none"
    assert han_share(ZH) > 0.9 and make_segmenter("auto", ZH)[0] == "jieba"
    name, seg = make_segmenter("jieba", [])
    assert seg("I like 花呗 a lot") .split()[:2] == ["I", "like"]


# ----------------------------------------------------------------------------- pseudo-label agreement


def test_regression_teachers_agree_within_tolerance_and_spread():
    from pipeline.rounds import Rules, select_fold

    train_y = np.array([0.0, 2.0] * 10)                    # std 1
    probas = np.array([[1.0, 1.0], [1.05, 2.0], [1.02, 1.02]])[:, :, None]   # (3 teachers, 2 rows, 1)
    label, votes, conf, voters = tasks.value_vote(probas, train_y, 0.1)
    assert np.allclose(label, [1.02, 1.02]) and votes.tolist() == [3, 2]
    assert np.isclose(conf[0], 0.95) and conf[1] == 0.0     # spread 0.05 std vs 1 std
    s = select_fold(probas, train_y, Rules(3, 0.9, 1.0, True, 0.1), tasks.get("regression"))
    assert s.rows.tolist() == [0] and s.labels.dtype == np.float64


def test_multilabel_rows_need_every_label_confident():
    probas = np.array([[[0.9, 0.1], [0.9, 0.6]],
                       [[0.9, 0.1], [0.8, 0.3]]])          # (2 teachers, 2 rows, 2 labels)
    label, votes, conf, voters = tasks.label_vote(probas)
    assert label.tolist() == [[1, 0], [1, 0]]              # row 1, label 2: a 1-1 tie, mean 0.45 < 0.5
    assert votes.tolist() == [2, 1] and voters.tolist() == [[True, True], [False, True]]
    assert np.allclose(conf, [0.9, 0.55])                  # the least confident label decides


def test_headerless_tsv_regression_pairs(tmp_path):
    """An STS-B-like file without a header: score<TAB>sentence1<TAB>sentence2, scores like 0.000."""
    (tmp_path / "in").mkdir()
    train, test = regression_pairs(60, 0), regression_pairs(15, 1)
    lines = [f"{s:.3f}\t{a}\t{b}" for s, a, b in zip(train["score"], train["text_a"], train["text_b"])]
    (tmp_path / "in" / "train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "in" / "test.tsv").write_text("\n".join(f"{a}\t{b}" for a, b in zip(test["text_a"], test["text_b"])))
    cfg = {**base_config(tmp_path), "task": "regression", "metric": "spearman", "models": CLASSICAL[:1]}
    cfg["data"] = {"dir": str(tmp_path / "in"), "train": "train.tsv", "test": "test.tsv", "header": False,
                   "text_a": 1, "text_b": 2, "label": 0}
    e = Exp(tmp_path, tmp_path / "tiny.yaml")
    e.write_config(cfg)
    # the test file's columns are 0 and 1: the same positions cannot name both files' texts
    assert e.run("preprocess") == 2
    (tmp_path / "in" / "test.tsv").write_text("\n".join(f"x\t{a}\t{b}" for a, b in zip(test["text_a"], test["text_b"])))
    run_all(e, "preprocess", "folds", "train", "ensemble")
    sub = pd.read_csv(tmp_path / "subs" / "tiny.csv")
    assert sub.columns.tolist() == ["id", "label"] and len(sub) == 15
    assert read_json(e.models / "lr" / "manifest.json")["classes"] == ["label"]


def test_classification_transformer_loss_and_activation_are_the_old_ones():
    """The transformer's classification path: weighted summed cross-entropy and softmax, as before
    task types (the classical path is pinned byte for byte by test_no_regress)."""
    from pipeline.models.transformer import batch_loss

    torch.manual_seed(0)
    logits, y, w = torch.randn(6, 3), torch.tensor([0, 2, 1, 1, 0, 2]), torch.rand(6)
    old = (torch.nn.functional.cross_entropy(logits, y, reduction="none") * w).sum()
    assert torch.equal(batch_loss(logits, y, w), old)
    assert torch.equal(tasks.CLASSIFICATION.activate(logits), torch.softmax(logits, dim=-1))
    y_np = np.array([0, 2, 1])
    assert tasks.CLASSIFICATION.targets(y_np, 3).dtype == np.int64
    stats = tasks.get("regression").target_stats(np.array([1.0, 3.0]))
    z = torch.tensor([[-1.0], [1.0]])
    assert stats == (2.0, 1.0) and tasks.get("regression").activate(z, stats).flatten().tolist() == [1.0, 3.0]
