"""Small-data fine-tuning levers (models/stability.py): top-layer re-initialisation, EMA and SWA
weight averages, FGM / AWP adversarial training, R-Drop. Each is checked on its invariant (what it
leaves alone, what it changes, what it restores) and through a fit on a tiny random BERT.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import model_identity
from pipeline.errors import PipelineError
from pipeline.models import stability
from pipeline.models.params import TransformerParams, as_dict
from pipeline.models.transformer import load_backbone
from pipeline.tasks import CLASSIFICATION, get as get_task
from test_transformer import bert_dir, fit, make_table, params, process_state_kept  # noqa: F401

LEVERS = [dict(reinit_layers=1), dict(ema=0.9), dict(swa_epochs=2), dict(adversarial="fgm"),
          dict(adversarial="awp", adv_eps=0.01, adv_start_epoch=2), dict(rdrop=1.0),
          dict(rdrop=0.5, adversarial="fgm", ema=0.95)]


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- defaults stay as they were


def test_levers_off_leave_the_params_dict_as_it_was():
    """No lever set: the params' dict (fingerprints, resolved configs, checkpoints) has none of their keys."""
    keys = {"reinit_layers", "ema", "swa_epochs", "adversarial", "adv_eps", "adv_lr", "adv_start_epoch", "rdrop"}
    assert not keys & set(as_dict(TransformerParams()))
    assert as_dict(TransformerParams(rdrop=1.0))["rdrop"] == 1.0


@pytest.mark.parametrize("bad, match", [
    (dict(swa_epochs=4, epochs=3), "swa_epochs"), (dict(ema=1.0), "ema"), (dict(ema=0.0), "ema"),
    (dict(ema=0.9, swa_epochs=1), "two weight averages"), (dict(adversarial="fgm", adv_start_epoch=5), "adv_start_epoch"),
    (dict(rdrop=-1.0), "rdrop"), (dict(adv_eps=0.0), "adv_eps"), (dict(reinit_layers=-1), "reinit_layers"),
    (dict(adversarial="pgd"), "adversarial"),
])
def test_bad_lever_values_are_refused(bad, match):
    with pytest.raises(PipelineError, match=match) as e:
        TransformerParams(**{"epochs": 3, **bad})
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- re-initialisation


def test_reinit_redraws_the_top_layers_only(bert_dir):
    _, before, _ = load_backbone(params(bert_dir), 2)
    old = state(before.backbone)
    torch.manual_seed(3)
    assert stability.reinit_top_layers(before.backbone, 1, "tiny") > 0
    new = state(before.backbone)
    for k in old:
        same = torch.equal(old[k], new[k])
        if ".layer.1." in k and k.endswith("weight") and "LayerNorm" not in k:
            assert not same, f"{k} kept its pretrained weights"
        elif ".layer.1." not in k:
            assert same, f"{k} changed though it is below the re-initialised layers"
    _, again, _ = load_backbone(params(bert_dir), 2)
    torch.manual_seed(3)
    stability.reinit_top_layers(again.backbone, 1, "tiny")
    assert all(torch.equal(v, state(again.backbone)[k]) for k, v in new.items())   # the fit's seed decides


def test_reinit_overlapping_frozen_layers_is_refused(bert_dir):
    with pytest.raises(PipelineError, match="overlap"):
        load_backbone(params(bert_dir, reinit_layers=1, freeze_layers=2), 2)
    with pytest.raises(PipelineError, match="overlap"):
        load_backbone(params(bert_dir, reinit_layers=3), 2)


# ----------------------------------------------------------------------------- weight averages


def test_ema_follows_its_formula_and_restores_the_trained_weights():
    lin = nn.Linear(3, 2)
    ema = stability.Ema(lin, 0.5)
    start = [p.detach().clone() for p in lin.parameters()]
    trained = []
    for step in range(1, 4):
        with torch.no_grad():
            for p in lin.parameters():
                p.add_(1.0)
        ema.update()
        trained.append([p.detach().clone() for p in lin.parameters()])
    want = [s.clone() for s in start]
    for t, step in zip(trained, range(1, 4)):
        d = min(0.5, (1 + step) / (10 + step))
        want = [w + (1 - d) * (x - w) for w, x in zip(want, t)]
    with ema.applied():
        assert all(torch.allclose(p, w) for p, w in zip(lin.parameters(), want))
    assert all(torch.equal(p, t) for p, t in zip(lin.parameters(), trained[-1]))


def test_swa_averages_the_window_and_nothing_before_it():
    lin = nn.Linear(2, 1)
    swa = stability.Swa(lin, 2, 4)
    seen = []
    for epoch in range(1, 5):
        with torch.no_grad():
            lin.weight.fill_(float(epoch))
        swa.collect(epoch)
        seen.append(float(epoch))
    with swa.applied() as on:
        assert on and torch.allclose(lin.weight, torch.full_like(lin.weight, 3.5))  # mean of epochs 3 and 4
    assert torch.equal(lin.weight, torch.full_like(lin.weight, 4.0))
    with stability.Swa(lin, 1, 4).applied() as on:
        assert not on


@pytest.mark.parametrize("validated", [False, True])
def test_ema_fit_keeps_the_averaged_weights(bert_dir, monkeypatch, validated):
    """The fitted model holds the EMA's weights, not the trained ones: committed when there are no
    validation rows, kept as the validated epoch's weights when there are (1 epoch: the last shadow)."""
    from pipeline.models.transformer import TransformerModel
    from test_transformer import context, folds

    made = []

    class Spy(stability.Ema):
        def __init__(self, *a):
            super().__init__(*a)
            made.append(self)

    monkeypatch.setattr(stability, "Ema", Spy)
    train, valid = folds(make_table("train", pair=True))
    model = TransformerModel(params(bert_dir, epochs=1, ema=0.9, lr=1e-2), 2, "lower")
    model.fit(train, valid if validated else None, context())
    trained = [p for p in model.module_.parameters() if p.requires_grad]
    assert made[0].updates > 1
    assert all(torch.equal(p, s) for p, s in zip(trained, made[0].shadow))


def test_swa_is_kept_only_where_it_validates_better(bert_dir):
    m, valid = fit(params(bert_dir, epochs=3, swa_epochs=2), make_table("train", pair=True))
    info = m.info_
    assert info["swa_epochs_averaged"] == 2 and info["kept"] in ("epoch", "swa")
    best_epoch_value = max(info["epoch_criterion"])
    assert (info["kept"] == "swa") == (info["swa_criterion"] > best_epoch_value)


# ----------------------------------------------------------------------------- adversaries


def _tiny_classifier(bert_dir):
    _, module, _ = load_backbone(params(bert_dir), 2)
    ids = torch.randint(5, 30, (4, 9), generator=torch.Generator().manual_seed(0))
    return module, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("copies", [1, 2])
def test_fgm_moves_each_row_by_eps_and_then_nothing(bert_dir, copies):
    module, batch = _tiny_classifier(bert_dir)
    emb = module.backbone.get_input_embeddings()
    clean = emb(batch["input_ids"]).detach()
    fgm = stability.Fgm(module, 0.7)
    with fgm.record():
        run = stability.doubled(batch) if copies == 2 else batch   # R-Drop's clean pass runs each row twice
        module(**run).sum().backward()
    with fgm.perturbed(len(batch["input_ids"])) as on:
        assert on
        moved = emb(batch["input_ids"]).detach()
    delta = (moved - clean).flatten(1).norm(dim=1)
    assert torch.allclose(delta, torch.full_like(delta, 0.7), atol=1e-5)
    assert torch.equal(emb(batch["input_ids"]).detach(), clean)   # the hook is gone


def test_fgm_without_a_gradient_changes_nothing(bert_dir):
    module, _ = _tiny_classifier(bert_dir)
    with stability.Fgm(module, 1.0).perturbed(4) as on:
        assert not on


def test_awp_stays_in_bounds_and_restores_every_weight(bert_dir):
    module, batch = _tiny_classifier(bert_dir)
    module(**batch).sum().backward()
    before = state(module)
    awp = stability.Awp(module, 0.01, 1.0)
    with awp.perturbed(4) as on:
        assert on
        during = state(module)
    moved = 0
    for p in awp.params:
        name = next(k for k, q in module.named_parameters() if q is p)
        w0, w = before[name], during[name]
        assert torch.all((w - w0).abs() <= 0.01 * w0.abs() + 1e-7)
        moved += int(not torch.equal(w, w0))
    assert moved > 0
    assert all(torch.equal(v, state(module)[k]) for k, v in before.items())
    emb = module.backbone.get_input_embeddings().weight
    assert all(p is not emb and p.ndim >= 2 for p in awp.params)


# ----------------------------------------------------------------------------- R-Drop


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
def test_consistency_is_zero_for_equal_outputs_symmetric_and_weighted(task):
    t = get_task(task)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    if task == "regression":
        a, b = a[:, :1], b[:, :1]
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0])
    assert float(t.consistency(a, a, w)) == pytest.approx(0.0, abs=1e-6)
    assert float(t.consistency(a, b, w)) > 0
    assert float(t.consistency(a, b, w)) == pytest.approx(float(t.consistency(b, a, w)), rel=1e-5)
    b2 = b.clone()
    b2[1] += 5.0   # a weight-0 row counts for nothing
    assert float(t.consistency(a, b2, w)) == pytest.approx(float(t.consistency(a, b, w)), rel=1e-5)


def test_rdrop_without_dropout_is_the_plain_fit(bert_dir):
    """Two passes without dropout agree: the consistency term is 0 and the mean loss is the loss."""
    table = make_table("train", pair=True)
    plain, valid = fit(params(bert_dir, epochs=2), table)
    rdrop, _ = fit(params(bert_dir, epochs=2, rdrop=1.0), table)
    np.testing.assert_allclose(rdrop.predict_proba(valid), plain.predict_proba(valid), atol=1e-4)


# ----------------------------------------------------------------------------- through a fit


@pytest.mark.parametrize("lever", LEVERS, ids=lambda d: "+".join(f"{k}={v}" for k, v in d.items()))
def test_every_lever_fits_deterministically_and_moves_the_model(bert_dir, lever):
    table = make_table("train", pair=True)
    kw = dict(epochs=2, dropout=0.1, **lever)
    a, valid = fit(params(bert_dir, **kw), table, seed=4)
    b, _ = fit(params(bert_dir, **kw), table, seed=4)
    base, _ = fit(params(bert_dir, epochs=2, dropout=0.1), table, seed=4)
    pa = a.predict_proba(valid)
    np.testing.assert_array_equal(pa, b.predict_proba(valid))
    assert pa.shape == (len(valid), 2) and np.allclose(pa.sum(1), 1.0, atol=1e-5)
    if a.info_.get("kept") != "epoch":   # an SWA average that validated worse leaves the best epoch kept
        assert not np.array_equal(pa, base.predict_proba(valid)), f"{lever} changed nothing"


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_levers_run_for_every_task(bert_dir, task):
    from pipeline.data import Split
    from pipeline.models.base import FitContext
    from pipeline.models.transformer import TransformerModel

    table = make_table("train", pair=False)
    rng = np.random.default_rng(0)
    y = rng.normal(size=len(table)) if task == "regression" else rng.integers(0, 2, (len(table), 3))
    n_out = 1 if task == "regression" else 3
    rows = np.arange(len(table))
    train, valid = Split([(table, rows[::2])], y[::2], "train"), Split([(table, rows[1::2])], y[1::2], "valid")
    t = get_task(task)
    ctx = FitContext(n_classes=n_out, seed=0, fold=0, out_dir=None, task=t, progress=False,
                     score=lambda yy, p: -float(np.mean((np.asarray(yy, float).reshape(p.shape) - p) ** 2)))
    p = params(bert_dir, epochs=2, rdrop=1.0, adversarial="fgm", ema=0.9, dropout=0.1, patience=0)
    pred = TransformerModel(p, n_out, "lower").fit(train, valid, ctx).predict_proba(valid)
    assert pred.shape == (len(valid), n_out) and np.isfinite(pred).all()


def test_every_lever_param_is_part_of_the_identity():
    from pipeline.config import ModelConfig

    base = ModelConfig(name="m", kind="transformer", view="raw", params={})
    for key, value in [("reinit_layers", 1), ("ema", 0.99), ("swa_epochs", 1), ("adversarial", "fgm"),
                       ("rdrop", 0.5)]:
        moved = ModelConfig(name="m", kind="transformer", view="raw", params={key: value})
        assert model_identity(moved) != model_identity(base), key
    assert CLASSIFICATION.name == "classification"


# ----------------------------------------------------------------------------- the recipe by size


def test_the_recipe_follows_the_rows_and_the_width():
    from pipeline.models.params import SIZE_RECIPES, size_recipe

    limits = [limit for limit, _, _ in SIZE_RECIPES[:-1]]
    for limit, (_, name, _), (_, after, _) in zip(limits, SIZE_RECIPES, SIZE_RECIPES[1:]):
        assert size_recipe(int(limit) - 1, 384)[0] == name and size_recipe(int(limit), 384)[0] == after
    small, wide = size_recipe(100, 384)[1], size_recipe(100, 1024)[1]
    assert wide["lr"] < small["lr"] and {k: v for k, v in wide.items() if k != "lr"} == \
        {k: v for k, v in small.items() if k != "lr"}


def test_sized_fills_only_the_unset_fields():
    from pipeline.models.params import size_recipe, sized

    q, record = sized(TransformerParams(epochs=2), 100, 384)
    name, recipe = size_recipe(100, 384)
    assert q.epochs == 2 and "epochs" not in record
    assert record == {"recipe": name, "rows": 100, "width": 384, **{k: v for k, v in recipe.items() if k != "epochs"}}
    assert all(getattr(q, k) == v for k, v in record.items() if k in recipe)
    assert q.early_stop == ("tuned" if q.patience > 0 else "metric")   # auto follows the sized patience
    full = TransformerParams(epochs=1, batch_size=4, lr=1e-3, llrd=1.0, warmup=0.0, patience=0, reinit_layers=0)
    assert sized(full, 100, 384) == (full, {})


def test_the_medium_recipe_reinitialises_the_top_layer_where_it_can():
    from pipeline.models.params import SIZE_RECIPES, sized

    medium = next(limit for limit, name, _ in SIZE_RECIPES if name == "small")   # the first medium row count
    assert sized(TransformerParams(), int(medium), 384, layers=6)[0].reinit_layers == 1
    assert sized(TransformerParams(), int(medium) - 1, 384, layers=6)[0].reinit_layers == 0   # small
    assert sized(TransformerParams(), int(medium), 384, layers=None)[0].reinit_layers == 0    # shared layers
    assert sized(TransformerParams(freeze_layers=2), int(medium), 384, layers=6)[0].reinit_layers == 0
    assert sized(TransformerParams(reinit_layers=2), int(medium), 384, layers=6)[0].reinit_layers == 2


def test_a_model_that_reads_the_recipes_is_refitted_when_they_change():
    from pipeline.config import ModelConfig, config_hash, model_identity
    from pipeline.models import params as P

    def identity(params: dict) -> dict:
        return model_identity(ModelConfig(name="m", kind="transformer", view="raw", params=params))

    full = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "llrd": 1.0, "warmup": 0.0, "patience": 0, "reinit_layers": 0}
    assert "recipes" not in identity(full)   # every recipe field set: the recipes do not matter
    assert identity({**full, "reinit_layers": None})["recipes"] == P.RECIPES_VERSION == identity({})["recipes"]
    assert "recipes" not in model_identity(ModelConfig(name="t", kind="tfidf_lr", view="raw", params={}))
    bumped = config_hash(identity({}))
    P.RECIPES_VERSION += 1
    try:
        assert config_hash(identity({})) != bumped
    finally:
        P.RECIPES_VERSION -= 1


def test_the_fold_record_says_what_was_sized(bert_dir):
    table = make_table("train", pair=True)
    unset = TransformerParams(backbone=str(bert_dir), max_length=32, precision="fp32", num_threads=1,
                              save_checkpoint=False)
    model, _ = fit(unset, table)
    rec = model.info_["sized"]
    assert rec["rows"] == len(table) // 2 and rec["width"] == 32 and rec["recipe"] == "small"
    assert model.params.epochs == rec["epochs"] == model.info_["epochs_run"]
    assert unset.epochs is None   # the config's params are left as they were
    explicit, _ = fit(params(bert_dir), table)
    assert "sized" not in explicit.info_


def test_a_lever_that_does_not_fit_the_sized_epochs_is_one_line(bert_dir):
    from pipeline.models.params import size_recipe

    too_many = size_recipe(20, 32)[1]["epochs"] + 1
    p = TransformerParams(**{**as_dict(params(bert_dir)), "epochs": None, "swa_epochs": too_many})   # fine unsized ...
    with pytest.raises(PipelineError, match="swa_epochs") as e:   # ... refused once they are sized
        fit(p, make_table("train", pair=True))
    assert "\n" not in str(e.value)


def test_awp_reads_nothing_back_and_leaves_zero_or_nonfinite_gradients_unmoved(bert_dir, monkeypatch):
    """On CUDA a Python test of a tensor's value waits for the GPU: AWP decides per matrix on the
    device, and a matrix with a zero or non-finite gradient stays put."""
    module, batch = _tiny_classifier(bert_dir)
    module(**batch).sum().backward()
    awp = stability.Awp(module, 0.01, 1.0)
    zero, bad = awp.params[0], awp.params[1]
    zero.grad.zero_()
    bad.grad[0, 0] = float("inf")
    before = state(module)

    def read(*_):
        raise AssertionError("a tensor's value read back on the host")

    monkeypatch.setattr(torch.Tensor, "__bool__", read)
    monkeypatch.setattr(torch.Tensor, "item", read)
    with awp.perturbed(4) as on:
        monkeypatch.undo()
        assert on
        during = state(module)
    names = {id(q): k for k, q in module.named_parameters()}
    assert torch.equal(during[names[id(zero)]], before[names[id(zero)]])
    assert torch.equal(during[names[id(bad)]], before[names[id(bad)]])
    assert sum(not torch.equal(during[names[id(p)]], before[names[id(p)]]) for p in awp.params[2:]) > 0
    assert all(torch.equal(v, state(module)[k]) for k, v in before.items())
