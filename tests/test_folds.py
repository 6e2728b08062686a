"""Folds: every row once, stratified, groups kept together, stale folds refused."""
import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.fold_assignment import pair_groups
from pipeline.fold_assignment import load_folds
from pipeline.prepared import load_prepared


def test_every_row_in_exactly_one_fold(prepared):
    cfg = load_config(prepared.config)
    train, _, _ = load_prepared(cfg)
    folds, info = load_folds(cfg, train)
    df = pd.read_csv(prepared.tmp / "work" / "tiny" / "folds.csv", dtype=str)
    assert df["id"].tolist() == train.ids and df["id"].is_unique
    assert set(folds) == {0, 1, 2}
    for k in range(3):  # stratified: each fold holds both classes in train proportion
        assert abs(train.y[folds == k].mean() - train.y.mean()) < 0.05


def test_pair_groups_connect_shared_sentences():
    a = ["s1", "s2", "s3", "s4"]
    b = ["s2", "s5", "s6", "s1"]
    g = pair_groups(a, b)
    assert g[0] == g[1] == g[3] and g[2] != g[0]


def test_auto_group_folds_keep_shared_sentences_together(exp):
    df = pd.read_csv(exp.tmp / "in" / "train.csv")
    df.loc[1::3, "text_a"] = df["text_a"].shift(1)[1::3]  # every third row reuses the previous row's sentence
    df.to_csv(exp.tmp / "in" / "train.csv", index=False)
    assert exp.run("preprocess", "folds.strategy=auto_group") == 0
    assert exp.run("folds", "folds.strategy=auto_group") == 0
    cfg = load_config(exp.config, ["folds.strategy=auto_group"])
    train, _, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    sentences = train.views["lower"][0]
    shared = {s for s in sentences if sentences.count(s) > 1}
    assert len(shared) >= 25 and len(set(folds)) == 3  # the check below has pairs of rows to keep together
    seen = {}
    for sentence, f in zip(sentences, folds):
        assert seen.setdefault(sentence, f) == f


def test_k_larger_than_smallest_class(exp, capsys):
    assert exp.run("preprocess") == 0
    assert exp.run("folds", "folds.n_splits=50") == 2
    assert "folds.n_splits=50 is larger than the smallest class" in capsys.readouterr().err


def test_stale_folds_refused_after_train_file_changed(prepared, capsys):
    path = prepared.tmp / "in" / "train.csv"
    df = pd.read_csv(path)
    df.loc[0, "label"] = 1 - df.loc[0, "label"]
    df.to_csv(path, index=False)
    assert prepared.run("train") == 2
    assert "was made from another train.csv than the current one" in capsys.readouterr().err
    assert prepared.run("preprocess") == 0
    assert prepared.run("train") == 2
    assert "folds.csv was made for other train rows or labels" in capsys.readouterr().err


def test_folds_kept_when_valid(prepared):
    """A rerun keeps folds.csv as it is: writes are atomic renames, so a rewrite shows as a new inode
    even within the file system's mtime resolution."""
    path = prepared.tmp / "work" / "tiny" / "folds.csv"
    before = path.stat()
    assert prepared.run("folds") == 0
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert prepared.run("folds", "--force") == 0
    assert path.stat().st_ino != before.st_ino  # the check above can see a rewrite
