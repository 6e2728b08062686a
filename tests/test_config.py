"""Config: typed loading, overrides, one-line errors."""
import pytest
import yaml

from conftest import ROOT
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.layout import data_dir


def test_defaults_file_then_overrides(exp):
    cfg = load_config(exp.config, ["folds.n_splits=4", "models.lr.params.C=0.5", "models.1.view=lemma"])
    assert cfg.folds.n_splits == 4
    assert cfg.model("lr").params["C"] == 0.5
    assert cfg.models[1].view == "lemma"
    assert cfg.model("lr").params["max_iter"] == 2000  # default filled in
    assert cfg.model("lr").seed == cfg.seed


def test_exponent_without_dot_is_a_float(exp):
    # YAML 1.1 reads 2e-4 as a string; a float field takes it as the number a user meant.
    assert load_config(exp.config, ["models.lr.params.C=2e-4"]).model("lr").params["C"] == 2e-4


@pytest.mark.parametrize("override, words", [
    ("folds.n_split=3", "unknown key folds.n_split"),
    ("folds.n_splits=three", "folds.n_splits must be int"),
    ("models.lr.params.C=high", "models.lr.params.C must be float"),
    ("models.lr.params.penalty=l1", "unknown key models.lr.params.penalty"),
    ("models.lr.kind=svm", "models.lr.kind='svm' is not a model kind"),
    ("models.nope.view=raw", "no item models.nope"),
    ("metric=auc", "metric must be one of"),
    ("ensemble.submit=median", "ensemble.submit='median' is not in ensemble.methods"),
])
def test_bad_config_names_the_key(exp, override, words):
    with pytest.raises(PipelineError, match=words.replace("(", r"\(").replace(".", r"\.")):
        load_config(exp.config, [override])


def test_bad_config_is_one_line_exit_2(exp, capsys):
    assert exp.run("train", "folds.nsplits=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config: unknown key folds.nsplits")


def test_env_expansion(exp, monkeypatch, tmp_path):
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["data"]["dir"] = "${TINY_DIR:-/nowhere}/x"
    exp.write_config(cfg)
    monkeypatch.setenv("TINY_DIR", "/data")
    assert str(data_dir(load_config(exp.config))) == "/data/x"
    monkeypatch.delenv("TINY_DIR")
    assert str(data_dir(load_config(exp.config))) == "/nowhere/x"
    cfg["data"]["dir"] = "${TINY_UNSET_VAR}"
    exp.write_config(cfg)
    with pytest.raises(PipelineError, match="TINY_UNSET_VAR"):
        data_dir(load_config(exp.config))


def test_resolved_config_saved_beside_outputs(prepared):
    assert prepared.run("train", "--models", "lr") == 0
    saved = yaml.safe_load((prepared.models / "lr" / "config.yaml").read_text())
    assert saved["models"][0]["params"]["max_iter"] == 2000
    assert (prepared.tmp / "work" / "tiny" / "prepared" / "config.yaml").is_file()
    assert (prepared.tmp / "work" / "tiny" / "config.yaml").is_file()  # beside folds.csv


SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
# model lists a user might put in place of a shipped config's: one cheap model, one transformer,
# models that share no name with any shipped config
EDITED_MODELS = ["[{name: words, kind: tfidf_lr}]", "[{name: bert, kind: transformer}]",
                 "[{name: trees, kind: tfidf_lgbm}, {name: frozen, kind: embed_lr}]"]


@pytest.mark.parametrize("models", EDITED_MODELS)
@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_editing_the_models_of_a_shipped_config_breaks_no_other_section(config, models):
    cfg = load_config(config, [f"models={models}"])
    names = [m.name for m in cfg.models]
    for selection in (cfg.ensemble.models, cfg.pseudo.models, cfg.pseudo.retrain):
        assert selection is None or set(selection) <= set(names)


def test_a_model_group_resolves_to_names_in_config_order(exp):
    models = ("models=[{name: bert, kind: transformer}, {name: lr, kind: tfidf_lr}, "
              "{name: emb, kind: embed_lr}]")
    cfg = load_config(exp.config, [models, "pseudo.retrain=cpu", "pseudo.models=gpu", "ensemble.models=cpu"])
    assert cfg.pseudo.retrain == ["lr", "emb"] and cfg.ensemble.models == ["lr", "emb"]
    assert cfg.pseudo.models == ["bert"]
    # a group no model belongs to is every model, so the section still means something
    only_cpu = load_config(exp.config, ["pseudo.models=gpu"])
    assert only_cpu.pseudo.models == ["lr", "plgbm"]
    # the shipped demo: the cheap students it always had, so its round fingerprints are unchanged
    assert load_config(ROOT / "configs" / "default.yaml").pseudo.retrain == ["tfidf_lr", "pair_lgbm"]


def test_an_unknown_model_name_says_what_to_write_instead(exp):
    with pytest.raises(PipelineError) as e:
        load_config(exp.config, ["pseudo.retrain=[tfidf_lr]"])
    assert str(e.value) == ("config: pseudo.retrain names unknown model 'tfidf_lr' (models: lr, plgbm); list models "
                            "of this config, or write pseudo.retrain: cpu (the models that run on CPU) or null "
                            "(every model)")


def test_a_type_is_worded_the_same_whichever_order_its_union_was_first_spelled():
    """typing caches a Union under its set of members: after some library spells Union[str, int],
    our Optional[Union[int, str]] comes back in that order, and the config reference and error
    lines changed words with the tests that ran before them (ray's import did it)."""
    from pipeline.config import type_name

    assert type_name(str | int | None) == type_name(int | str | None) == "int or str or null"
    assert type_name(list[str | int] | None) == "a list of int or str or null"
