"""Offline augmentation (models[].augment), tested through the driver with the spy model: augmented
rows only in a fold's training part, labelled as their source rows, seeded, and in the fingerprint."""
import sys
import types

import numpy as np
import pytest
import yaml

import spy_model
from pipeline.augment import augment_split, eda
from pipeline.config import AugmentConfig, load_config
from pipeline.data import Split, Table, whole
from pipeline.models import registry
from pipeline.fold_assignment import load_folds
from pipeline.prepared import load_prepared
from pipeline.views import make_lemmatizer, normalise, table_views

AUG = {"copies": 2, "random_swap": 0.2, "random_delete": 0.1, "random_insert": 0.1, "swap": True}


def spy_config(exp, augment):
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"] = [{"name": "spy", "kind": "spy", "view": "raw", "augment": augment}]
    exp.write_config(cfg)


@pytest.fixture
def spy(prepared, monkeypatch):
    monkeypatch.setitem(registry.KINDS, "spy", registry.Kind(spy_model.SpyParams, "spy_model:SpyModel"))
    spy_model.CALLS.clear()
    spy_config(prepared, AUG)
    return prepared


def test_augmented_rows_train_only_with_their_sources_labels(spy):
    assert spy.run("train") == 0
    cfg = load_config(spy.config)
    train, _, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    label = dict(zip(train.ids, train.y))
    assert [c["fold"] for c in spy_model.CALLS] == [0, 1, 2]
    for c in spy_model.CALLS:
        held_out = {train.ids[i] for i in np.flatnonzero(folds == c["fold"])}
        assert c["valid"] == {("train", int(i)) for i in np.flatnonzero(folds == c["fold"])}
        fold_rows = [i for i in c["train_ids"] if "~" not in i]
        augmented = [i for i in c["train_ids"] if "~" in i]
        assert len(augmented) == 3 * len(fold_rows)  # 2 copies + the swapped pairs
        sources = {i.split("~")[0] for i in augmented}
        assert sources == set(fold_rows) and not sources & held_out  # never a held-out row or its copy
        np.testing.assert_array_equal(c["train_y"], [label[i.split("~")[0]] for i in c["train_ids"]])
        a, b = c["train_texts"]
        n = len(fold_rows)
        assert a[3 * n:] == b[:n] and b[3 * n:] == a[:n]  # swap: (b, a) of every training row
        assert a[n:3 * n] != a[:n] * 2  # the EDA copies changed some words
    oof = np.load(spy.models / "spy" / "oof.npy")
    assert oof.shape == (len(train), 2)  # the driver counted each OOF row predicted exactly once


def test_augmentation_is_seeded_and_deterministic(spy):
    assert spy.run("train") == 0
    first = [c["train_texts"] for c in spy_model.CALLS]
    spy_model.CALLS.clear()
    assert spy.run("train", "--force") == 0
    assert [c["train_texts"] for c in spy_model.CALLS] == first
    spy_model.CALLS.clear()
    assert spy.run("train", "--force", "models.spy.seed=8") == 0
    assert [c["train_texts"] for c in spy_model.CALLS] != first


def test_augment_settings_change_the_fingerprint(spy):
    assert spy.run("train") == 0
    before = yaml.safe_load((spy.models / "spy" / "manifest.json").read_text())["config_sha256"]
    spy_model.CALLS.clear()
    spy_config(spy, {**AUG, "random_swap": 0.3})
    assert spy.run("train") == 0
    assert len(spy_model.CALLS) == 3  # retrained
    after = yaml.safe_load((spy.models / "spy" / "manifest.json").read_text())
    assert after["config_sha256"] != before and after["config"]["augment"]["random_swap"] == 0.3


def test_mlm_op_calls_the_substitute_function(spy, monkeypatch):
    seen = []

    def substitute(texts, backbone, rate, seed):
        seen.append((len(texts), backbone, rate, seed))
        return [t + " zz" for t in texts]

    monkeypatch.setitem(sys.modules, "pipeline.models.mlm", types.SimpleNamespace(substitute=substitute))
    backbone = spy.tmp / "tiny-mlm"   # a folder: backbones are checked before anything trains
    backbone.mkdir()
    spy_config(spy, {"copies": 1, "mlm": 0.15, "mlm_backbone": str(backbone)})
    assert spy.run("train") == 0
    c = spy_model.CALLS[0]
    n = len([i for i in c["train_ids"] if "~" not in i])
    assert [s[:3] for s in seen[:2]] == [(n, str(backbone), 0.15)] * 2  # text_a, then text_b of fold 0
    assert all(t.endswith(" zz") for t in c["train_texts"][0][n:])
    assert len({s[3] for s in seen}) == len(seen)  # a seed per call


def test_views_of_augmented_rows_come_from_the_preprocess_functions():
    _, lemma = make_lemmatizer("lemminflect")
    table = Table("train", ["a", "b"], table_views(["Dogs Were running", "Cats sat"], None, lemma), np.array([0, 1]))
    cfg = AugmentConfig(copies=1, random_swap=0.5)
    out = augment_split(whole(table), cfg, 3, lambda a, b: table_views(a, b, lemma))
    aug = out.parts[1][0]
    assert aug.views["lower"][0] == [normalise(t) for t in aug.views["raw"][0]]
    assert aug.views["lemma"][0] == table_views(aug.views["raw"][0], None, lemma)["lemma"][0]


@pytest.mark.parametrize("y", [np.array([0.5, 2.0, 3.5]), np.array([[0, 1], [1, 1], [1, 0]])])
def test_labels_of_augmented_rows_for_regression_and_multilabel(y):
    views = lambda a, b: table_views(a, b, lambda w: w)  # noqa: E731
    table = Table("train", ["a", "b", "c"], views(["one two three", "four five", "six"], None), y)
    split = Split([(table, np.array([2, 0]))], y[[2, 0]])
    out = augment_split(split, AugmentConfig(copies=2, random_delete=0.5), 1, views)
    np.testing.assert_array_equal(out.y, y[[2, 0, 2, 0, 2, 0]])
    assert out.parts[1][0].ids == ["c~aug0", "a~aug0", "c~aug1", "a~aug1"]


def test_eda_ops_and_synonyms():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(copies=1, synonym=1.0, synonyms="wordnet")
    assert eda("big dog", cfg, rng, lambda w: {"big": ["large"], "dog": ["hound"]}[w]) == "large hound"
    assert eda("big dog", AugmentConfig(copies=1, random_delete=1.0), rng, None) in ("big", "dog")  # one word kept
    assert sorted(eda("a b c d", AugmentConfig(copies=1, random_swap=0.5), rng, None).split()) == list("abcd")
    assert len(eda("a b c d", AugmentConfig(copies=1, random_insert=0.5), rng, None).split()) == 6


def test_swap_on_single_texts_is_one_line():
    from pipeline.errors import PipelineError

    views = lambda a, b: table_views(a, b, lambda w: w)  # noqa: E731
    table = Table("train", ["a"], views(["one two"], None), np.array([1]))
    with pytest.raises(PipelineError, match="augment.swap needs a pair task"):
        augment_split(whole(table), AugmentConfig(swap=True), 1, views)


@pytest.mark.parametrize("augment, words", [
    ({"copies": 1, "synonym": 0.1, "synonyms": "wordnet"}, "WordNet corpus is not installed"),
    ({"copies": 1}, "needs an op"),
    ({"copies": 1, "mlm": 0.1}, "mlm_backbone"),
    ({"random_swap": 2.0}, "between 0 and 1"),
])
def test_bad_augment_is_one_line(exp, capsys, augment, words):
    from pipeline.views import wordnet_available

    if "synonyms" in augment and wordnet_available():
        pytest.skip("nltk's WordNet corpus is installed here")
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"][0]["augment"] = augment
    exp.write_config(cfg)
    assert exp.run("preprocess") == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("error: config: models")


def test_synonyms_auto_resolves_to_what_is_installed(exp):
    from pipeline.views import wordnet_available

    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"][0]["augment"] = {"copies": 1, "synonym": 0.1}
    exp.write_config(cfg)
    m = load_config(exp.config).models[0]
    assert m.augment.synonyms == ("wordnet" if wordnet_available() else "none")
