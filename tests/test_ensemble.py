"""Ensemble stage: honest scores, estimators, refusal of mismatched matrices, the submission."""
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ExperimentConfig
from pipeline.combiners import Blender, Stacker, Voter
from pipeline.combination import choose_submit, honest_oof
from pipeline.fileio import read_json, sha256_file, write_json
from pipeline.metrics import decide

from conftest import tiny_pairs


def test_blender_weights_on_simplex_and_prefer_the_good_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.stack([1 - (0.8 * y + 0.1), 0.8 * y + 0.1], 1)
    noise = rng.dirichlet([1, 1], 400)
    b = Blender().fit([good, noise], y)
    assert np.isclose(b.weights_.sum(), 1) and (b.weights_ >= 0).all()
    assert b.weights_[0] > 0.9


def test_voter_majority_and_tie_break():
    a = np.array([[0.9, 0.1], [0.4, 0.6]])
    b = np.array([[0.6, 0.4], [0.45, 0.55]])
    c = np.array([[0.2, 0.8], [0.51, 0.49]])
    assert Voter().predict_proba([a, b, c]).argmax(1).tolist() == [0, 1]
    assert Voter().predict_proba([a, c]).argmax(1).tolist() == [0, 1]  # ties: higher mean probability


def test_honest_oof_never_sees_its_fold():
    """The stacker's OOF row k must not change when fold k's own labels change."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    folds = np.arange(300) % 3
    mats = [rng.dirichlet([1, 1], 300), rng.dirichlet([1, 1], 300)]
    base = honest_oof(Stacker, mats, y, folds)
    y2 = y.copy()
    y2[folds == 0] = 1 - y2[folds == 0]
    again = honest_oof(Stacker, mats, y2, folds)
    np.testing.assert_allclose(base[folds == 0], again[folds == 0])
    assert not np.allclose(base[folds == 1], again[folds == 1])


def test_ensemble_writes_checked_submission(prepared, capsys):
    assert prepared.run("train") == 0
    assert prepared.run("ensemble") == 0
    out = capsys.readouterr().out
    assert "[stack]" in out and "[blend]" in out and "[vote]" in out
    sub = pd.read_csv(prepared.tmp / "subs" / "tiny.csv", dtype=str)
    test = pd.read_csv(prepared.tmp / "in" / "test.csv", dtype=str)
    assert sub.columns.tolist() == ["id", "label"]
    assert sub["id"].tolist() == test["id"].tolist()
    assert set(sub["label"]) <= {"0", "1"}
    summary = read_json(prepared.models / "ensembles" / "summary.json")
    assert summary["methods"]["stack"]["oof_scores"]["accuracy"] > 0.5
    for m in ("stack", "blend", "vote"):
        assert (prepared.tmp / "subs" / f"tiny_{m}.csv").is_file()


def test_submit_auto_takes_the_best_honest_oof_method():
    cfg = ExperimentConfig()
    results = {"stack": {"oof_scores": {"accuracy": 0.80, "logloss": 0.40},
                         "oof_scores_thresholded": {"accuracy": 0.78, "logloss": 0.40}},
               "blend": {"oof_scores": {"accuracy": 0.79, "logloss": 0.45}},
               "vote": {"oof_scores": {"accuracy": 0.79, "logloss": 0.30}}}
    assert cfg.ensemble.submit == "auto" and choose_submit(cfg, results) == "blend"  # thresholded .78 < .79
    cfg.metric = "logloss"
    assert choose_submit(cfg, results) == "vote"  # lower is better
    cfg.ensemble.submit = "stack"
    assert choose_submit(cfg, results) == "stack"


def test_submit_auto_through_the_stage(prepared, capsys):
    assert prepared.run("train") == 0
    assert prepared.run("ensemble", "ensemble.submit=auto") == 0
    summary = read_json(prepared.models / "ensembles" / "summary.json")
    honest = {m: (r.get("oof_scores_thresholded") or r["oof_scores"])["accuracy"] for m, r in summary["methods"].items()}
    assert honest[summary["submitted"]] == max(honest.values())
    chosen = prepared.tmp / "subs" / f"tiny_{summary['submitted']}.csv"
    assert (prepared.tmp / "subs" / "tiny.csv").read_bytes() == chosen.read_bytes()
    assert f"({summary['submitted']} (best honest OOF accuracy))" in capsys.readouterr().out


def test_original_label_names_written_back(exp):
    """Names sorted the other way round from the numbers they replace: class 0 is "no" (was 1), class 1
    "yes" (was 0). Every method's submission must name, row by row, the class its matrix decides."""
    path = exp.tmp / "in" / "train.csv"
    df = pd.read_csv(path)
    df["label"] = df["label"].map({0: "yes", 1: "no"})
    df.to_csv(path, index=False)
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert exp.run(stage) == 0
    summary = read_json(exp.models / "ensembles" / "summary.json")
    assert set(summary["methods"]) == {"stack", "blend", "vote"}
    names = np.array(["no", "yes"])
    for m, record in summary["methods"].items():
        sub = pd.read_csv(exp.tmp / "subs" / f"tiny_{m}.csv", dtype=str)
        pred = decide(np.load(exp.models / "ensembles" / m / "test.npy"), record["threshold"])
        assert sub["label"].tolist() == names[pred].tolist(), m
    truth = np.where(tiny_pairs(30, 1)["label"] == 1, "no", "yes")
    sub = pd.read_csv(exp.tmp / "subs" / "tiny.csv", dtype=str)
    assert (sub["label"].to_numpy() == truth).mean() > 0.7  # a swapped name would score below 0.3


def test_matrix_from_other_folds_refused(prepared, capsys):
    assert prepared.run("train") == 0
    assert prepared.run("ensemble") == 0
    sub = prepared.tmp / "subs" / "tiny.csv"
    before = sub.read_bytes()
    # retrain one model on other folds: its manifest now disagrees with folds.csv
    assert prepared.run("folds", "folds.seed=99", "--force") == 0
    assert prepared.run("train", "folds.seed=99", "--models", "lr") == 0
    capsys.readouterr()
    assert prepared.run("ensemble", "folds.seed=99") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "plgbm/manifest.json and" in err and "folds.csv disagree on folds_csv_sha256" in err
    assert sub.read_bytes() == before  # nothing downstream written


def test_tampered_matrix_refused(prepared, capsys):
    assert prepared.run("train") == 0
    oof = prepared.models / "lr" / "oof.npy"
    arr = np.load(oof)
    arr[0, 0] += 0.1
    np.save(oof, arr)
    assert prepared.run("ensemble") == 2
    assert "lr/oof.npy does not match its sha256 in" in capsys.readouterr().err


def test_two_manifests_disagree_named(prepared, capsys):
    assert prepared.run("train") == 0
    m = prepared.models / "lr" / "manifest.json"
    manifest = read_json(m)
    manifest["classes"] = ["a", "b"]
    write_json(m, manifest)
    assert prepared.run("ensemble") == 2
    assert "lr/manifest.json and" in capsys.readouterr().err
