"""The K-fold driver: no leakage, each OOF row once, determinism, resume, refusal of bad predictions."""
import hashlib

import numpy as np
import pytest
import yaml

import spy_model
from pipeline.config import load_config
from pipeline.models import registry
from pipeline.fold_assignment import load_folds
from pipeline.prepared import load_prepared


@pytest.fixture
def spy(prepared, monkeypatch):
    monkeypatch.setitem(registry.KINDS, "spy", registry.Kind(spy_model.SpyParams, "spy_model:SpyModel"))
    spy_model.CALLS.clear()
    cfg = yaml.safe_load(prepared.config.read_text())
    cfg["models"] = [{"name": "spy", "kind": "spy", "view": "raw"}]
    prepared.write_config(cfg)
    return prepared


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_validation_row_is_trained_on(spy):
    assert spy.run("train") == 0
    cfg = load_config(spy.config)
    train, _, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    assert [c["fold"] for c in spy_model.CALLS] == [0, 1, 2]
    for c in spy_model.CALLS:
        assert not c["train"] & c["valid"]
        assert c["valid"] == {("train", int(i)) for i in np.flatnonzero(folds == c["fold"])}
        assert len(c["train"]) + len(c["valid"]) == len(train)
    assert len({c["seed"] for c in spy_model.CALLS}) == 3  # a seed per fold, all derived from the config


def test_oof_each_row_once_and_manifest(spy):
    assert spy.run("train") == 0
    m = yaml.safe_load((spy.models / "spy" / "manifest.json").read_text())
    oof = np.load(spy.models / "spy" / "oof.npy")
    tf = np.load(spy.models / "spy" / "test_folds.npy")
    assert oof.shape == (90, 2) and oof.dtype == np.float32
    assert tf.shape == (3, 30, 2)
    np.testing.assert_allclose(np.load(spy.models / "spy" / "test.npy"), tf.mean(0), rtol=1e-6)
    # row i holds, once, the prediction of the fold model that held it out (the spy's formula)
    cfg = load_config(spy.config)
    train, _, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    bias = {c["fold"]: float(np.mean(c["train_y"])) for c in spy_model.CALLS}
    p1 = [((len(t) % 7) / 10 + 0.2) * 0.5 + 0.5 * bias[k] for t, k in zip(train.views["raw"][0], folds)]
    np.testing.assert_allclose(oof[:, 1], p1, rtol=1e-6)
    assert m["n_splits"] == 3 and m["classes"] == ["0", "1"]
    assert {"oof.npy", "test.npy", "test_folds.npy"} <= set(m["files"])
    for name, h in m["files"].items():
        assert digest(spy.models / "spy" / name) == h


def test_same_seed_gives_identical_matrices(prepared):
    assert prepared.run("train") == 0
    files = [prepared.models / m / f for m in ("lr", "plgbm") for f in ("oof.npy", "test.npy", "test_folds.npy")]
    first = {f: (digest(f), f.stat().st_ino) for f in files}
    assert prepared.run("train", "--force") == 0
    for f in files:
        assert f.stat().st_ino != first[f][1], f"{f} was not written again: --force retrained nothing"
        assert digest(f) == first[f][0], f


def test_resume_skips_finished_folds_and_models(spy, monkeypatch):
    monkeypatch.setattr(spy_model.SpyModel, "fit", _crash_on(2, spy_model.SpyModel.fit))
    assert spy.run("train") == 130
    assert [c["fold"] for c in spy_model.CALLS] == [0, 1]
    monkeypatch.undo()
    monkeypatch.setitem(registry.KINDS, "spy", registry.Kind(spy_model.SpyParams, "spy_model:SpyModel"))
    spy_model.CALLS.clear()
    assert spy.run("train") == 0
    assert [c["fold"] for c in spy_model.CALLS] == [2]
    spy_model.CALLS.clear()
    assert spy.run("train") == 0
    assert spy_model.CALLS == []  # whole model up to date
    assert spy.run("train", "--force") == 0
    assert [c["fold"] for c in spy_model.CALLS] == [0, 1, 2]


def _crash_on(fold, fit):
    def wrapped(self, train, valid, ctx):
        if ctx.fold == fold:
            raise KeyboardInterrupt
        return fit(self, train, valid, ctx)
    return wrapped


def test_nan_predictions_write_nothing(spy, capsys):
    assert spy.run("train", "models.spy.params.nan=true") == 2
    assert "non-finite predictions" in capsys.readouterr().err
    assert not (spy.models / "spy" / "fold0" / "fold.json").exists()
    assert not (spy.models / "spy" / "oof.npy").exists()


def test_folds_saved_in_an_older_format_retrain(spy, monkeypatch, capsys):
    """A kind whose save() changed (save_format bumped) does not reuse folds saved the old way: the
    ensemble refuses the old matrices as stale and the train stage retrains every fold. A format of
    1 leaves the fingerprint as it was."""
    assert spy.run("train") == 0 and spy.run("ensemble") == 0
    spy_model.CALLS.clear()
    assert spy.run("train") == 0 and spy_model.CALLS == []
    monkeypatch.setitem(registry.KINDS, "spy", registry.Kind(spy_model.SpyParams, "spy_model:SpyModel", save_format=2))
    capsys.readouterr()
    assert spy.run("ensemble") == 2
    assert "save_format" in capsys.readouterr().err
    assert spy.run("train") == 0
    assert [c["fold"] for c in spy_model.CALLS] == [0, 1, 2]
    manifest = yaml.safe_load((spy.models / "spy" / "manifest.json").read_text())
    assert manifest["config"]["save_format"] == 2
    assert spy.run("ensemble") == 0


def test_classical_kinds_fingerprint_their_save_format(exp):
    """The classical kinds write predictor.json (format 2); transformers keep format 1 (no key),
    checked for every registered kind (the test config names only classical ones)."""
    import dataclasses

    from pipeline.config import model_identity

    model = load_config(exp.config).models[0]
    for kind in registry.KINDS:
        identity = model_identity(dataclasses.replace(model, kind=kind))
        assert ("save_format" in identity) == (kind != "transformer"), kind
