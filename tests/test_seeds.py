"""Seed bags (models[].seeds): each fold trains once per seed into fold<k>/seed<s>/, fold<k>'s
predictions are the means, a killed bag resumes per (fold, seed), a bag of one is the plain model."""
import numpy as np
import pytest
import yaml

import spy_model
from pipeline.config import load_config, model_identity
from pipeline.models import registry
from pipeline.fold_assignment import load_folds
from pipeline.prepared import load_prepared


def spy_config(exp, **model):
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"] = [{"name": "spy", "kind": "spy", "view": "raw", **model}]
    exp.write_config(cfg)


@pytest.fixture
def bag(prepared, monkeypatch):
    monkeypatch.setitem(registry.KINDS, "spy", registry.Kind(spy_model.SpyParams, "spy_model:SpyModel"))
    spy_model.CALLS.clear()
    spy_config(prepared, seeds=[3, 5])
    return prepared


def calls() -> list[tuple[int, int]]:
    out = [(c["fold"], c["seed"]) for c in spy_model.CALLS]
    spy_model.CALLS.clear()
    return out


def test_bag_layout_means_and_records(bag):
    assert bag.run("train") == 0
    assert calls() == [(k, s + k) for k in range(3) for s in (3, 5)]  # fold k with seed s runs seed s + k
    model = bag.models / "spy"
    cfg = load_config(bag.config)
    train, _, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    for k in range(3):
        fold = model / f"fold{k}"
        rec = yaml.safe_load((fold / "fold.json").read_text())
        assert rec["seeds"] == [3, 5] and set(rec["seed_scores"]) == {"3", "5"}
        for name in ("val_pred.npy", "test_pred.npy"):
            per_seed = [np.load(fold / f"seed{s}" / name) for s in (3, 5)]
            np.testing.assert_allclose(np.load(fold / name), np.mean(per_seed, axis=0), rtol=1e-6)
        assert yaml.safe_load((fold / "seed5" / "fold.json").read_text())["seed"] == 5
        assert "seed5/val_pred.npy" in rec["files"] and "seed3/fold.json" in rec["files"]
        np.testing.assert_array_equal(np.load(model / "oof.npy")[folds == k], np.load(fold / "val_pred.npy"))
    manifest = yaml.safe_load((model / "manifest.json").read_text())
    assert manifest["seeds"] == [3, 5] and manifest["config"]["seeds"] == [3, 5]
    assert bag.run("train") == 0 and calls() == []  # up to date


def test_killed_bag_redoes_only_missing_seeds(bag, monkeypatch):
    fit = spy_model.SpyModel.fit

    def crash(self, train, valid, ctx):
        if (ctx.fold, ctx.seed) == (1, 5 + 1):
            raise KeyboardInterrupt
        return fit(self, train, valid, ctx)

    monkeypatch.setattr(spy_model.SpyModel, "fit", crash)
    assert bag.run("train") == 130
    assert calls() == [(0, 3), (0, 5), (1, 4)]
    monkeypatch.setattr(spy_model.SpyModel, "fit", fit)
    assert bag.run("train") == 0
    assert calls() == [(1, 6), (2, 5), (2, 7)]
    assert bag.run("train", "--force") == 0
    assert len(calls()) == 6


def test_adding_a_seed_reuses_the_finished_ones(bag):
    assert bag.run("train") == 0
    before = yaml.safe_load((bag.models / "spy" / "manifest.json").read_text())["config_sha256"]
    calls()
    spy_config(bag, seeds=[3, 5, 9])
    assert bag.run("train") == 0
    assert calls() == [(k, 9 + k) for k in range(3)]
    manifest = yaml.safe_load((bag.models / "spy" / "manifest.json").read_text())
    assert manifest["config_sha256"] != before and manifest["seeds"] == [3, 5, 9]
    spy_config(bag, seeds=[3, 9])  # dropping a seed: only the means are redone
    assert bag.run("train") == 0 and calls() == []
    rec = yaml.safe_load((bag.models / "spy" / "fold0" / "fold.json").read_text())
    assert rec["seeds"] == [3, 9]


def test_bag_of_one_is_the_plain_model(exp):
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"][0]["seeds"] = [11]
    exp.write_config(cfg)
    one = load_config(exp.config).models[0]
    cfg["models"][0].pop("seeds")
    cfg["models"][0]["seed"] = 11
    exp.write_config(cfg)
    plain = load_config(exp.config).models[0]
    assert (one.seed, one.seeds) == (11, None) and model_identity(one) == model_identity(plain)
    assert "seeds" not in model_identity(plain) and "augment" not in model_identity(plain)


@pytest.mark.parametrize("model, words", [({"seed": 1, "seeds": [2, 3]}, "cannot be set together with seed"),
                                          ({"seeds": []}, "non-empty list"),
                                          ({"seeds": [2, 2]}, "without repeats")])
def test_bad_seeds_are_one_line(exp, capsys, model, words):
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"][0].update(model)
    exp.write_config(cfg)
    assert exp.run("preprocess") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config: models[0].seeds") or err.startswith("error: config: models.")
    assert words in err and len(err.splitlines()) == 1


def test_plain_model_turned_bag_keeps_its_folds_as_its_seed(bag, monkeypatch):
    """`seed: 3` then `seeds: [3, 5]`: only seed 5 trains; the plain folds become seed3/ (their
    predictions and checkpoint files, verified by their sha256), and fold<k>/ keeps no stale copy."""
    def save(self, directory):
        path = directory / "weights.bin"
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"fold {self.seed_}".encode())
        return [path]

    monkeypatch.setattr(spy_model.SpyModel, "save", save, raising=False)
    monkeypatch.setattr(spy_model.SpyModel, "fit", _remember_seed(spy_model.SpyModel.fit))
    spy_config(bag, seed=3)
    assert bag.run("train") == 0
    model = bag.models / "spy"
    plain = [np.load(model / f"fold{k}" / "val_pred.npy") for k in range(3)]
    assert calls() == [(k, 3 + k) for k in range(3)]
    spy_config(bag, seeds=[3, 5])
    assert bag.run("train") == 0
    assert calls() == [(k, 5 + k) for k in range(3)]
    for k in range(3):
        fold = model / f"fold{k}"
        np.testing.assert_array_equal(np.load(fold / "seed3" / "val_pred.npy"), plain[k])
        assert (fold / "seed3" / "weights.bin").read_bytes() == f"fold {3 + k}".encode()
        assert yaml.safe_load((fold / "seed3" / "fold.json").read_text())["seed"] == 3
        assert not (fold / "weights.bin").exists()
    assert bag.run("train") == 0 and calls() == []
    (model / "fold1" / "seed3" / "weights.bin").write_bytes(b"damaged")
    assert bag.run("train") == 0 and calls() == [(1, 4)]  # a damaged adopted seed is retrained


def _remember_seed(fit):
    def wrapped(self, train, valid, ctx):
        self.seed_ = ctx.seed
        return fit(self, train, valid, ctx)
    return wrapped
