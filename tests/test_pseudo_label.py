"""Pseudo labels: the selection rules, fold-aware provenance and no pseudo row in a validation fold."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import PseudoConfig, load_config
from pipeline.fileio import read_json, sha256_file
from pipeline.models import registry
from pipeline.fold_assignment import load_folds
from pipeline.prepared import load_prepared
from pipeline.rounds import Rules, class_quotas, resolve_rules, select_fold
from pipeline.tasks import class_vote as vote

# ----------------------------------------------------------------------------- selection rules


def binary(p1):
    """(n,) P(class 1) -> (n, 2) float32 probabilities."""
    p1 = np.asarray(p1, dtype=np.float32)
    return np.stack([1 - p1, p1], axis=1)


def rules(min_votes=1, min_confidence=0.0, max_fraction=10.0, keep_class_balance=False):
    return Rules(min_votes, min_confidence, max_fraction, keep_class_balance)


BALANCED_TRAIN = np.array([0, 1] * 50)


def test_quorum_counts_the_models_that_agree():
    # row 0: all three say 1; row 1: two say 1, one says 0; row 2: one says 1
    probas = np.stack([binary([0.95, 0.95, 0.95]), binary([0.95, 0.95, 0.05]), binary([0.95, 0.05, 0.05])])
    label, votes, conf, voters = vote(probas)
    assert label.tolist() == [1, 1, 0] and votes.tolist() == [3, 2, 2]
    assert voters[1].tolist() == [True, True, False]
    np.testing.assert_allclose(conf, [0.95, 0.95, 0.95], rtol=1e-6)  # mean among the voters only
    assert select_fold(probas, BALANCED_TRAIN, rules(min_votes=3)).rows.tolist() == [0]
    assert sorted(select_fold(probas, BALANCED_TRAIN, rules(min_votes=2)).rows.tolist()) == [0, 1, 2]


def test_confidence_must_reach_the_threshold():
    # mean of the voters' probability: row 0 exactly 0.9 (float32, as stored), row 1 just below
    probas = np.stack([binary([0.95, 0.9, 0.2]), binary([0.85, 0.8999, 0.4])])
    s = select_fold(probas, BALANCED_TRAIN, rules(min_votes=2, min_confidence=0.9))
    assert s.rows.tolist() == [0] and s.labels.tolist() == [1]
    assert resolve_rules(PseudoConfig(), 3).min_votes == 3  # default: every teacher must agree


def test_class_quotas_keep_train_balance():
    assert class_quotas(np.array([100, 100]), np.array([75, 25]), 40, True).tolist() == [30, 10]
    # class 1 has only 2 candidates: it limits class 0 so the 3:1 share holds
    assert class_quotas(np.array([100, 2]), np.array([75, 25]), 40, True).tolist() == [6, 2]
    assert class_quotas(np.array([100, 0]), np.array([50, 50]), 40, True).tolist() == [0, 0]
    assert class_quotas(np.array([100, 2]), np.array([75, 25]), 40, False).tolist() == [40, 2]


def test_caps_per_class_and_total_take_the_most_confident():
    rng = np.random.default_rng(0)
    p1 = np.concatenate([rng.uniform(0.0, 0.1, 20), rng.uniform(0.9, 1.0, 6), [0.5] * 4])  # 20 of 0, 6 of 1
    probas = binary(p1)[None]
    conf = np.maximum(p1, 1 - p1)
    s = select_fold(probas, BALANCED_TRAIN, rules(min_confidence=0.8, keep_class_balance=True))
    assert np.bincount(s.labels).tolist() == [6, 6]
    assert set(s.rows[s.labels == 0]) == set(np.argsort(-conf[:20], kind="stable")[:6])
    assert np.all(np.diff(s.confidence) <= 0)  # most confident first
    # no balance: every candidate, until the total cap of max_fraction * the fold's training rows
    s = select_fold(probas, BALANCED_TRAIN, rules(min_confidence=0.8, max_fraction=0.1))
    assert s.cap == 10 and len(s.rows) == 10
    assert set(s.rows) == set(np.argsort(-conf[:26], kind="stable")[:10])
    assert len(select_fold(probas, BALANCED_TRAIN, rules(min_confidence=0.8)).rows) == 26


def test_selection_is_deterministic_with_ties_by_row():
    probas = binary([0.95] * 6 + [0.05] * 6)[None]
    a = select_fold(probas, BALANCED_TRAIN, rules(max_fraction=0.04, keep_class_balance=True))
    b = select_fold(probas.copy(), BALANCED_TRAIN, rules(max_fraction=0.04, keep_class_balance=True))
    assert a.rows.tolist() == b.rows.tolist()
    assert sorted(a.rows.tolist()) == [0, 1, 6, 7]  # equal confidence: the lower rows of each class


# ----------------------------------------------------------------------------- through the driver


@dataclass
class OracleParams:
    sure: float = 0.97


CALLS: list[dict] = []


class FoldOracle:
    """A teacher whose fold k is sure only about test rows i with i % 3 == k (class i % 2), and
    unsure (0.5) about every other row: its fold average is never confident."""

    def __init__(self, params: OracleParams, n_classes: int, view: str):
        self.params, self.info_ = params, {}

    def fit(self, train, valid, ctx):
        CALLS.append({"dir": str(ctx.out_dir), "fold": ctx.fold, "train": train.keys(), "train_y": train.y.copy(),
                      "valid": set(valid.keys())})
        self.fold_ = ctx.fold
        return self

    def predict_proba(self, split):
        p1 = [(self.params.sure if i % 2 else 1 - self.params.sure) if t.name == "test" and i % 3 == self.fold_
              else 0.5 for t, rows in split.parts for i in rows]
        return binary(p1)

    def save(self, directory):
        return []


@pytest.fixture
def oracle(prepared, monkeypatch):
    monkeypatch.setitem(registry.KINDS, "oracle", registry.Kind(OracleParams, "test_pseudo_label:FoldOracle"))
    CALLS.clear()
    cfg = yaml.safe_load(prepared.config.read_text())
    cfg["models"] = [{"name": "o1", "kind": "oracle"}, {"name": "o2", "kind": "oracle", "params": {"sure": 0.95}}]
    cfg["pseudo"] = {"enabled": True, "rounds": 2, "min_confidence": 0.9, "max_fraction": 1.0}
    cfg["ensemble"] = {"methods": ["blend"], "submit": "blend"}
    prepared.write_config(cfg)
    assert prepared.run("train") == 0
    CALLS.clear()
    return prepared


def test_fold_k_learns_only_from_fold_k_teachers(oracle, capsys):
    assert oracle.run("pseudo_label") == 0
    out = capsys.readouterr().out
    assert "round 1: 30 pseudo labels" in out and "round 2: 30 pseudo labels" in out
    for r in (1, 2):
        df = pd.read_csv(oracle.tmp / "work" / "tiny" / "pseudo" / f"r{r}.csv", dtype={"label": str})
        for k in range(3):
            fold = df[df["fold"] == k]
            assert sorted(fold["test_row"]) == [i for i in range(30) if i % 3 == k]
            assert (fold["label"] == (fold["test_row"] % 2).astype(str)).all()
        assert (df["voters"] == "o1;o2").all() and (df["votes"] == 2).all()
        np.testing.assert_allclose(df["confidence"], 0.96, atol=1e-6)  # mean of o1's 0.97 and o2's 0.95
        assert (df["round"] == r).all() and df["test_id"].tolist() == [f"r{i}" for i in df["test_row"]]
    # the fold average is never confident: a selection from test.npy would have found nothing
    avg = np.load(oracle.models / "o1" / "test.npy")
    assert avg.max() < 0.9


def test_no_pseudo_row_ever_in_a_validation_fold(oracle):
    assert oracle.run("pseudo_label") == 0
    cfg = load_config(oracle.config)
    train, _, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    for r in (1, 2):
        df = pd.read_csv(oracle.tmp / "work" / "tiny" / "pseudo" / f"r{r}.csv")
        calls = [c for c in CALLS if f"rounds/r{r}/" in c["dir"]]
        assert sorted((c["dir"].split("/")[-2], c["fold"]) for c in calls) == [(m, k) for m in ("o1", "o2")
                                                                              for k in range(3)]
        for c in calls:
            k = c["fold"]
            assert c["valid"] == {("train", int(i)) for i in np.flatnonzero(folds == k)}
            pseudo = [(key, y) for key, y in zip(c["train"], c["train_y"]) if key[0] == "test"]
            mine = df[df["fold"] == k]
            assert len(mine) == 10  # the test rows i with i % 3 == k: something to check below
            assert sorted(key[1] for key, _ in pseudo) == sorted(mine["test_row"])
            assert {key[1]: y for key, y in pseudo} == dict(zip(mine["test_row"], mine["label"]))
            assert {key for key in c["train"] if key[0] == "train"} == {("train", int(i))
                                                                      for i in np.flatnonzero(folds != k)}


def test_rounds_chain_provenance_and_rerun_skips(oracle, capsys):
    assert oracle.run("pseudo_label") == 0
    work = oracle.tmp / "work" / "tiny" / "pseudo"
    r1, r2 = read_json(work / "r1.json"), read_json(work / "r2.json")
    assert r1["teacher_round"] == 0 and r2["teacher_round"] == 1
    assert yaml.safe_load((work / "config.yaml").read_text())["pseudo"]["enabled"] is True
    for name in ("o1", "o2"):
        round1 = read_json(oracle.models / "rounds" / "r1" / name / "manifest.json")
        round2 = read_json(oracle.models / "rounds" / "r2" / name / "manifest.json")
        assert r2["teacher_config_sha256"][name] == round1["config_sha256"]  # round 2 learns from round 1
        assert round1["pseudo_labels_sha256"] == r1["csv_sha256"] == sha256_file(work / "r1.csv")
        assert round2["round"] == 2 and round2["pseudo_labels_sha256"] == r2["csv_sha256"]
    assert r1["counts"] == {f"fold{k}": {"0": 5, "1": 5} for k in range(3)}
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    CALLS.clear()
    assert oracle.run("pseudo_label") == 0
    assert CALLS == []  # every student up to date
    assert before == {p.name: p.read_bytes() for p in work.iterdir()}
    # the ensemble stage combines a round's students by default
    capsys.readouterr()
    assert oracle.run("ensemble", "ensemble.round=2") == 0
    summary = read_json(oracle.models / "rounds" / "r2" / "ensembles" / "summary.json")
    assert summary["round"] == 2 and sorted(summary["models"]) == ["o1", "o2"]


def test_students_subset_and_quorum_through_the_stage(oracle):
    assert oracle.run("pseudo_label", "pseudo.rounds=1", "pseudo.retrain=[o1]", "pseudo.min_confidence=0.95") == 0
    df = pd.read_csv(oracle.tmp / "work" / "tiny" / "pseudo" / "r1.csv")
    assert len(df) == 30
    assert not (oracle.models / "rounds" / "r1" / "o2").exists()
    assert [p.name for p in (oracle.models / "rounds" / "r1").iterdir()] == ["o1"]
    # the round's ensemble takes its student and the model it did not retrain from round 0
    # under the settings the round was made with (others are refused: test_reliability3)
    assert oracle.run("ensemble", "ensemble.round=1", "pseudo.retrain=[o1]", "pseudo.min_confidence=0.95") == 0
    summary = read_json(oracle.models / "rounds" / "r1" / "ensembles" / "summary.json")
    assert sorted(summary["models"]) == ["o1", "o2"]
    r0 = read_json(oracle.models / "o2" / "manifest.json")["oof_scores"]
    assert summary["models"]["o2"]["oof"] == pytest.approx(r0)
    assert oracle.run("pseudo_label", "pseudo.rounds=1", "pseudo.min_confidence=0.97") == 0
    assert len(pd.read_csv(oracle.tmp / "work" / "tiny" / "pseudo" / "r1.csv")) == 0


def test_disabled_is_one_line_and_writes_nothing(prepared, capsys):
    assert prepared.run("pseudo_label") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "disabled" in out[0]
    assert not (prepared.tmp / "work" / "tiny" / "pseudo").exists()


@pytest.mark.parametrize("override, message", [
    ("pseudo.min_votes=3", "pseudo.min_votes=3 must be between 1 and the number of teachers (2)"),
    ("pseudo.max_fraction=0", "pseudo.max_fraction=0.0 must be positive"),
])
def test_bad_rules_are_one_line(oracle, capsys, override, message):
    assert oracle.run("pseudo_label", override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_teachers_are_one_line(prepared, capsys):
    assert prepared.run("pseudo_label", "pseudo.enabled=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run the train stage first" in err[0]
