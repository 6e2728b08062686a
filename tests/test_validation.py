"""Out-of-range values and hostile input give one clear line, never a traceback.

Model params (every kind's ranges), texts with no word characters, YAML configs (repeated keys,
alias bombs, bad encodings, syntax errors) and `pipeline.inspect_models` on mismatched inputs. Each
refusal is checked the way a user meets it where that is cheap: exit code 2, one stderr line that
starts with `error: ` and names the key or file, and nothing written.
"""
from __future__ import annotations

import json
import shutil
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, Exp, base_config, stage_main, tiny_pairs
from pipeline import cli
from pipeline.errors import InvalidValue, PipelineError
from pipeline.fileio import read_json, sha256_file, write_json
from pipeline.models import params as P
from pipeline.models.heads import HEADS
from pipeline.yamlio import MAX_NODES, load_yaml, load_yaml_value, read_config_text


# ----------------------------------------------------------------------------- helpers


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(e: Exp, capsys, stage: str, *args: str) -> str:
    """Run a stage that must refuse, writing nothing; return its one error line."""
    before = snapshot(e.tmp)
    capsys.readouterr()
    assert e.run(stage, *args) == 2
    line = one_line(capsys)
    assert snapshot(e.tmp) == before
    return line


def with_model(e: Exp, kind: str, params: dict, name: str = "m") -> None:
    cfg = base_config(e.tmp)
    cfg["models"] = [{"name": name, "kind": kind, "params": params}]
    cfg["ensemble"] = {"methods": ["blend"], "submit": "blend"}
    e.write_config(cfg)


# ----------------------------------------------------------------------------- 1. params


# The cases of the issue, through the command line as a user types them.
ISSUE_CASES = [
    ("models.lr.params.C=-1", "models.lr.params.C=-1.0 must be positive"),
    ("models.lr.params.word_ngrams=[3,1]", "models.lr.params.word_ngrams=[3, 1] must be [min, max] with 1 <= min <= max"),
    ("models.plgbm.params.num_leaves=1", "models.plgbm.params.num_leaves=1 must be between 2 and 131072"),
    ("models.plgbm.params.subsample=2", "models.plgbm.params.subsample=2.0 must be in (0, 1]"),
    ("models.plgbm.params.n_estimators=-5", "models.plgbm.params.n_estimators=-5 must be at least 1"),
]


@pytest.mark.parametrize("override, message", ISSUE_CASES)
def test_issue_cases_one_line(exp, capsys, override, message):
    line = refused(exp, capsys, "train", override)
    assert line == f"error: config: {message}" or message in line, line


# Every range of every kind: (kind, params, the message after "models.m.params.").
BAD_PARAMS = [
    ("tfidf_lr", {"C": 0}, "C=0.0 must be positive"),
    ("tfidf_lr", {"C": float("nan")}, "C must be a finite number, got nan"),
    ("tfidf_lr", {"C": float("inf")}, "C must be a finite number, got inf"),
    ("tfidf_lr", {"max_iter": 0}, "max_iter=0 must be at least 1"),
    ("tfidf_lr", {"word_ngrams": [0, 2]}, "word_ngrams=[0, 2] must be [min, max]"),
    ("tfidf_lr", {"word_ngrams": [1, 2, 3]}, "word_ngrams=[1, 2, 3] must be [min, max]"),
    ("tfidf_lr", {"word_ngrams": [1, 1000]}, "word_ngrams=[1, 1000] must be [min, max] with 1 <= min <= max <= 10"),
    ("tfidf_lr", {"char_ngrams": [5, 2]}, "char_ngrams=[5, 2] must be [min, max]"),
    ("tfidf_lr", {"char_ngrams": [3]}, "char_ngrams=[3] must be [min, max]"),
    ("tfidf_lr", {"word_ngrams": [], "char_ngrams": []}, "word_ngrams and char_ngrams are both [] (off)"),
    ("tfidf_lr", {"max_features": 0}, "max_features=0 must be at least 1"),
    ("tfidf_lr", {"min_df": 0}, "min_df=0 must be at least 1"),
    ("tfidf_lgbm", {"learning_rate": 0}, "learning_rate=0.0 must be positive"),
    ("tfidf_lgbm", {"min_child_samples": 0}, "min_child_samples=0 must be at least 1"),
    ("tfidf_lgbm", {"subsample": 0}, "subsample=0.0 must be in (0, 1]"),
    ("tfidf_lgbm", {"colsample_bytree": 1.5}, "colsample_bytree=1.5 must be in (0, 1]"),
    ("tfidf_lgbm", {"reg_lambda": -1}, "reg_lambda=-1.0 must be at least 0"),
    ("tfidf_lgbm", {"n_jobs": 0}, "n_jobs=0 must be at least 1"),
    ("tfidf_lgbm", {"min_df": -3}, "min_df=-3 must be at least 1"),
    ("tfidf_lgbm", {"max_bin": 1}, "max_bin=1 must be at least 2"),
    ("pair_lgbm", {"max_bin": 0}, "max_bin=0 must be at least 2"),
    ("pair_lgbm", {"embed": ""}, "embed='' must be null or a non-empty string"),
    ("pair_lgbm", {"num_leaves": 10 ** 9}, "num_leaves=1000000000 must be between 2 and 131072"),
    ("embed_lr", {"backbone": " "}, "backbone=' ' must be a non-empty string"),
    ("embed_lr", {"max_length": 4}, "max_length=4 must be at least 8"),
    ("embed_lr", {"batch_size": 0}, "batch_size=0 must be at least 1"),
    ("embed_lr", {"C": -2}, "C=-2.0 must be positive"),
    ("embed_lr", {"max_iter": -1}, "max_iter=-1 must be at least 1"),
    ("transformer", {"backbone": ""}, "backbone='' must be a non-empty string"),
    ("transformer", {"max_length": 7}, "max_length=7 must be at least 8"),
    ("transformer", {"epochs": 0}, "epochs=0 must be at least 1 (or null: the recipe for the data size)"),
    ("transformer", {"batch_size": 0}, "batch_size=0 must be at least 1 (or null: the recipe for the data size)"),
    ("transformer", {"grad_accum": 0}, "grad_accum=0 must be at least 1"),
    ("transformer", {"lr": -1e-5}, "lr=-1e-05 must be positive (or null: the recipe for the data size)"),
    ("transformer", {"head_lr": 0}, "head_lr=0.0 must be positive"),
    ("transformer", {"llrd": 0}, "llrd=0.0 must be in (0, 1] (or null: the recipe for the data size)"),
    ("transformer", {"llrd": 1.5}, "llrd=1.5 must be in (0, 1] (or null: the recipe for the data size)"),
    ("transformer", {"weight_decay": -0.1}, "weight_decay=-0.1 must be at least 0"),
    ("transformer", {"warmup": 1.5}, "warmup=1.5 must be in [0, 1] (or null: the recipe for the data size)"),
    ("transformer", {"max_grad_norm": -1}, "max_grad_norm=-1.0 must be at least 0"),
    ("transformer", {"dropout": 1}, "dropout=1.0 must be in [0, 1)"),
    ("transformer", {"backbone_dropout": -0.1}, "backbone_dropout=-0.1 must be null or in [0, 1)"),
    ("transformer", {"multi_sample_dropout": 0}, "multi_sample_dropout=0 must be at least 1"),
    ("transformer", {"freeze_layers": -1}, "freeze_layers=-1 must be at least 0"),
    ("transformer", {"patience": -1}, "patience=-1 must be at least 0 (or null: the recipe for the data size)"),
    ("transformer", {"predict_batch_size": 0}, "predict_batch_size=0 must be at least 1"),
    ("transformer", {"num_threads": -2}, "num_threads=-2 must be null or at least 0"),
]


@pytest.mark.parametrize("kind, params, message", BAD_PARAMS, ids=[f"{k}-{next(iter(p))}" for k, p, _ in BAD_PARAMS])
def test_out_of_range_param_one_line_naming_the_key(exp, capsys, kind, params, message):
    with_model(exp, kind, params)
    line = refused(exp, capsys, "train")
    assert line == f"error: config: models.m.params.{message}" or f"models.m.params.{message}" in line, line
    assert len(line) < 300


def test_a_huge_bad_value_is_cut_in_the_error_line(exp, capsys):
    with_model(exp, "transformer", {"backbone": " " * 100_000})
    line = refused(exp, capsys, "train")
    assert "models.m.params.backbone=" in line and "must be a non-empty string" in line and len(line) < 300


@pytest.mark.parametrize("cls", [P.TfidfLRParams, P.TfidfLGBMParams, P.PairLGBMParams, P.EmbedLRParams,
                                 P.TransformerParams])
def test_defaults_of_every_kind_are_valid(cls):
    cls()


@pytest.mark.parametrize("cls, values", [
    (P.TfidfLRParams, dict(word_ngrams=[], char_ngrams=[1, 1], min_df=1, C=1e-6, max_iter=1)),
    (P.TfidfLRParams, dict(word_ngrams=[2, 2], char_ngrams=[])),
    (P.TfidfLGBMParams, dict(num_leaves=2, subsample=1.0, colsample_bytree=1.0, reg_lambda=0.0, n_jobs=1)),
    (P.TransformerParams, dict(max_length=8, llrd=1.0, warmup=0.0, dropout=0.0, max_grad_norm=0.0, num_threads=0,
                               patience=0, backbone_dropout=0.0)),
])
def test_edge_values_accepted(cls, values):
    p = cls(**values)
    assert all(getattr(p, k) == v for k, v in values.items())


def test_params_built_in_code_are_checked_too():
    """Not only configs: a TransformerParams made in code refuses a bad head or NaN learning rate."""
    with pytest.raises(InvalidValue, match="head='pool' must be one of 'cls', 'mean', 'max4', 'bilstm'"):
        P.TransformerParams(head="pool")
    with pytest.raises(InvalidValue, match="lr=nan must be positive"):
        P.TransformerParams(lr=float("nan"))
    with pytest.raises(InvalidValue, match="subsample"):
        P.TfidfLGBMParams(subsample=-0.5)


def test_transformer_heads_match_the_head_registry():
    hints = typing.get_type_hints(P.TransformerParams)
    assert set(typing.get_args(hints["head"])) == set(HEADS)


# ----------------------------------------------------------------------------- 2. no word characters


@pytest.fixture(scope="module")
def symbols(tmp_path_factory) -> Exp:
    """A prepared pair experiment whose texts are punctuation and emoji only."""
    root = tmp_path_factory.mktemp("symbols")
    (root / "in").mkdir()
    for name, n, labelled in (("train", 60, True), ("test", 12, False)):
        df = tiny_pairs(n, 0 if labelled else 1, labelled=labelled)
        df["text_a"] = ["!!! " + "?" * (i % 4) for i in range(n)]
        df["text_b"] = ["\U0001F642" * (1 + i % 3) for i in range(n)]
        df.to_csv(root / "in" / f"{name}.csv", index=False)
    e = Exp(root, root / "tiny.yaml")
    cfg = base_config(root)
    lgbm = {"n_estimators": 5, "n_jobs": 1}
    cfg["models"] = [
        {"name": "lr", "kind": "tfidf_lr", "params": {"min_df": 1}},
        {"name": "lr_char", "kind": "tfidf_lr", "params": {"min_df": 1, "word_ngrams": []}},
        {"name": "lr_mindf", "kind": "tfidf_lr", "params": {"min_df": 1000, "word_ngrams": []}},
        {"name": "tl", "kind": "tfidf_lgbm", "params": lgbm},
        {"name": "tl_char", "kind": "tfidf_lgbm", "params": {**lgbm, "word_ngrams": []}},
        {"name": "pl", "kind": "pair_lgbm", "params": lgbm},
    ]
    e.write_config(cfg)
    assert e.run("preprocess") == 0 and e.run("folds") == 0
    return e


@pytest.mark.parametrize("model, message", [
    ("lr", "error: lr fold 1/3 (tfidf_lr, view 'lower'): the word n-gram TF-IDF learned no terms: none of the "
           "80 training texts has a word character (letter, digit or _); set word_ngrams: [] to use char n-grams"),
    ("tl", "error: tl fold 1/3 (tfidf_lgbm, view 'lower'): the word n-gram TF-IDF learned no terms"),
    ("lr_mindf", "error: lr_mindf fold 1/3 (tfidf_lr, view 'lower'): the char_wb n-gram TF-IDF learned no terms: "
                 "no term is in min_df=1000 or more of the 80 training texts; lower min_df"),
], ids=["tfidf_lr", "tfidf_lgbm", "min_df"])
def test_no_word_characters_one_line(symbols, capsys, model, message):
    line = refused(symbols, capsys, "train", "--models", model)
    assert line.startswith(message), line


@pytest.mark.parametrize("model", ["lr_char", "tl_char", "pl"])
def test_no_word_characters_trains_where_it_can(symbols, model):
    """Char n-grams see punctuation and emoji; pair_lgbm's surface features need no vocabulary."""
    assert symbols.run("train", "--models", model) == 0
    oof = np.load(symbols.models / model / "oof.npy")
    assert oof.shape == (60, 2) and np.isfinite(oof).all()


# ----------------------------------------------------------------------------- 3. YAML


def bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": a few hundred bytes, width ** levels strings when expanded."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40) -> str:
    """Merge keys (`<<`) double the pairs PyYAML copies per level, inside the load itself."""
    lines = ["m0: &m0 {x: 1, y: 2}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


YAML_REFUSED = [
    ("repeated key", "seed: 1\nmodels:\n  - name: a\n    kind: tfidf_lr\nseed: 2\n",
     "config file x.yaml line 5: key 'seed' repeated (first on line 1)"),
    ("repeated nested key", "a:\n  lr: 1\n  b: 2\n  'lr': 3\n", "config file x.yaml line 4: key 'lr' repeated (first on line 2)"),
    ("alias bomb", bomb(), f"aliases expand this value to more than {MAX_NODES} values"),
    ("merge-key bomb", merge_bomb(), f"aliases expand this value to more than {MAX_NODES} values"),
    ("recursive alias", "a: &a [1, *a]\n", "config file x.yaml line 1: an alias refers to a value that contains it"),
    ("syntax error", "a: 1\nb: [1, 2\nc: 3\n", "config file x.yaml is not valid YAML (line 3):"),
    ("tab indent", "a:\n\tb: 1\n", "config file x.yaml is not valid YAML (line 2):"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, "config file x.yaml is not valid YAML (line 1): nested more than"),
    ("control character", "a: 1\nb: \x07\n", "config file x.yaml is not valid YAML (line 2): control character U+0007"),
    ("two documents", "a: 1\n---\nb: 2\n", "config file x.yaml is not valid YAML (line 2):"),
    ("python tag", "a: !!python/object/apply:os.system [ls]\n", "config file x.yaml is not valid YAML (line 1):"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in YAML_REFUSED], ids=[c[0] for c in YAML_REFUSED])
def test_yaml_refused_quickly_in_one_short_line(text, message):
    start = time.perf_counter()
    with pytest.raises(PipelineError) as info:
        load_yaml(text, "config file x.yaml")
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert msg.startswith(message) or message in msg, msg
    assert "\n" not in msg and len(msg) < 300


def test_yaml_alias_bomb_refused_in_an_override():
    start = time.perf_counter()
    flow = "{" + bomb().strip().replace("\n", ", ") + "}"
    with pytest.raises(PipelineError, match=f"override models.lr.params line 1: aliases expand .* {MAX_NODES}"):
        load_yaml_value(flow, "override models.lr.params")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text, value", [("3", 3), ("[1, 2]", [1, 2]), ("", ""), ("[1, 2", "[1, 2"),
                                         ("a: b: c", "a: b: c"), ("null", None), ("2e-4", "2e-4")])
def test_yaml_override_values(text, value):
    assert load_yaml_value(text) == value


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_as_before(path):
    text = read_config_text(path)
    start = time.perf_counter()
    assert load_yaml(text, str(path)) == yaml.safe_load(text)
    assert time.perf_counter() - start < 0.5


def test_yaml_aliases_become_copies():
    """An override of one model's params must not change another that shared them by an anchor."""
    tree = load_yaml("base: &p {C: 1}\nmodels:\n  - {name: a, params: *p}\n  - {name: b, params: {<<: *p, D: 2}}\n", "s")
    assert tree["models"][0]["params"] == {"C": 1} and tree["models"][1]["params"] == {"C": 1, "D": 2}
    tree["models"][0]["params"]["C"] = 5
    assert tree["base"] == {"C": 1}


def test_yaml_merge_key_may_repeat_a_merged_key():
    assert load_yaml("a: &a {x: 1}\nb: {<<: *a, x: 2}\n", "s")["b"] == {"x": 2}


def test_yaml_empty_document_is_none():
    assert load_yaml("", "s") is None and load_yaml("# only a comment\n", "s") is None


def test_config_text_not_utf8_names_file_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("experiment: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(PipelineError) as info:
        read_config_text(path)
    assert str(info.value).startswith(f"config file {path} is not UTF-8 text: byte 15 ")


def test_config_text_bom_dropped_and_missing_file(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfseed: 3\n")
    assert read_config_text(path) == "seed: 3\n"
    with pytest.raises(PipelineError, match="config file not found: .*nope.yaml"):
        read_config_text(tmp_path / "nope.yaml")


# Through the stage scripts (config.load_config reads and parses with pipeline.yamlio).
def test_config_file_repeated_key_one_line(exp, capsys):
    text = exp.config.read_text(encoding="utf-8")
    exp.config.write_text(text + "seed: 8\n", encoding="utf-8")
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("seed:"))
    line = refused(exp, capsys, "folds")
    assert f"line {len(text.splitlines()) + 1}: key 'seed' repeated (first on line {first})" in line
    assert str(exp.config) in line


def test_config_file_alias_bomb_one_line(exp, capsys):
    exp.config.write_text(bomb(), encoding="utf-8")
    start = time.perf_counter()
    line = refused(exp, capsys, "folds")
    assert time.perf_counter() - start < 2.0
    assert "aliases expand" in line and str(exp.config) in line and len(line) < 300


def test_config_override_alias_bomb_one_line(exp, capsys):
    flow = "{" + bomb().strip().replace("\n", ", ") + "}"
    start = time.perf_counter()
    line = refused(exp, capsys, "folds", f"models.lr.params={flow}")
    assert time.perf_counter() - start < 2.0
    assert "aliases expand" in line and len(line) < 300


def test_config_file_not_utf8_one_line(exp, capsys):
    exp.config.write_bytes(exp.config.read_bytes() + "experiment: caf\u00e9\n".encode("latin-1"))
    line = refused(exp, capsys, "folds")
    assert f"config file {exp.config} is not UTF-8 text: byte" in line


# ----------------------------------------------------------------------------- 4. inspect


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Exp:
    """Two trained models (lr, plgbm) of the tiny experiment, shared: tests copy what they change."""
    root = tmp_path_factory.mktemp("trained")
    (root / "in").mkdir()
    tiny_pairs(90, 0).to_csv(root / "in" / "train.csv", index=False)
    tiny_pairs(30, 1, labelled=False).to_csv(root / "in" / "test.csv", index=False)
    e = Exp(root, root / "tiny.yaml")
    e.write_config(base_config(root))
    for stage in ("preprocess", "folds", "train"):
        assert e.run(stage) == 0
    return e


@pytest.fixture
def models(trained, tmp_path) -> Path:
    """A private copy of the trained models folder."""
    shutil.copytree(trained.models, tmp_path / "models")
    return tmp_path / "models"


def run_inspect(*args: str) -> int:
    try:
        cli.run(stage_main("inspect_models"), [str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def inspect_refused(capsys, *args) -> str:
    capsys.readouterr()
    assert run_inspect(*args) == 2
    return one_line(capsys)


def forge(model_dir: Path, **arrays: np.ndarray) -> None:
    """Replace matrices and make the manifest agree with them (a consistent, foreign model)."""
    m = read_json(model_dir / "manifest.json")
    for name, arr in arrays.items():
        np.save(model_dir / f"{name}.npy", arr.astype(np.float32))
        m["files"][f"{name}.npy"] = sha256_file(model_dir / f"{name}.npy")
    m["n_train"] = int(np.load(model_dir / "oof.npy").shape[0])
    m["n_splits"] = int(np.load(model_dir / "test_folds.npy").shape[0])
    write_json(model_dir / "manifest.json", m)


def test_inspect_with_train_labels_works(trained, models, capsys):
    capsys.readouterr()
    assert run_inspect(models, "--labels", trained.tmp / "work/tiny/prepared/train.jsonl") == 0
    out = capsys.readouterr().out
    assert "OOF correlation" in out and "plgbm" in out and "fold2" in out


@pytest.mark.parametrize("labels, message", [
    ("work/tiny/prepared/test.jsonl", "test.jsonl line 1: y is null (a test file holds no labels); --labels takes"),
    ("in/train.csv", "train.csv line 1 is not JSON: --labels takes the prepared train.jsonl"),
    ("work/tiny/prepared/meta.json", "meta.json line 1 is not JSON"),
    ("in/missing.jsonl", "labels file not found: "),
    ("in", "labels file not found: "),
])
def test_inspect_bad_labels_file_one_line(trained, models, capsys, labels, message):
    line = inspect_refused(capsys, models, "--labels", trained.tmp / labels)
    assert message in line, line


def test_inspect_labels_of_other_rows_refused(trained, models, capsys, tmp_path):
    rows = [json.loads(line) for line in (trained.tmp / "work/tiny/prepared/train.jsonl").read_text().splitlines()]
    for r in rows[:5]:
        r["y"] = 1 - r["y"]
    other = tmp_path / "train.jsonl"
    other.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert "disagree on labels_sha256" in inspect_refused(capsys, models, "--labels", other)
    other.write_text("\n".join(json.dumps({**r, "y": 7}) for r in rows) + "\n")
    assert "row 1: y=7 is not a class index" in inspect_refused(capsys, models, "--labels", other)
    other.write_text("\n".join(json.dumps(r) for r in rows[:-1]) + "\n")
    assert "has 89 rows, the OOF matrices 90" in inspect_refused(capsys, models, "--labels", other)
    other.write_text('{"id": "r0", "y": "1"}\n')
    assert "line 1: y='1' is not a class index" in inspect_refused(capsys, models, "--labels", other)


def test_inspect_models_of_different_rows_refused_naming_both(models, capsys):
    d = models / "plgbm"
    forge(d, oof=np.load(d / "oof.npy")[:80])
    line = inspect_refused(capsys, models)
    assert f"{d} and {models / 'lr'} disagree on the number of train rows (80 vs 90)" in line


def test_inspect_models_of_different_k_shown_with_dashes(models, capsys):
    d = models / "plgbm"
    forge(d, test_folds=np.load(d / "test_folds.npy")[:2])
    m = read_json(d / "manifest.json")
    m["fold_scores"] = m["fold_scores"][:2]
    write_json(d / "manifest.json", m)
    capsys.readouterr()
    assert run_inspect(models) == 0
    out = capsys.readouterr().out
    fold_rows = out.split("per-fold accuracy")[1].split("OOF correlation")[0]
    plgbm = next(line for line in fold_rows.splitlines() if line.startswith("plgbm"))
    assert plgbm.split()[-1] == "-" and len(plgbm.split()) == 4


def table_rows(out: str, section: int) -> dict[str, list[str]]:
    """The rows of the `section`-th table of inspect's output, by model name."""
    table = out.strip().split("\n\n")[section].splitlines()
    rows = [line.split() for line in table if line and not line.startswith(("-", "per-fold", "OOF"))]
    return {r[0]: r[1:] for r in rows[1:]}


@pytest.mark.parametrize("key, section, columns", [
    ("kind", 0, [0]), ("oof_scores", 0, [2, 3, 4]), ("timings", 0, [5]), ("fold_scores", 1, [0, 1, 2])])
def test_inspect_manifest_without_optional_key_shows_dash(models, capsys, key, section, columns):
    m = read_json(models / "lr" / "manifest.json")
    del m[key]
    write_json(models / "lr" / "manifest.json", m)
    capsys.readouterr()
    assert run_inspect(models) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = table_rows(captured.out, section)
    assert [rows["lr"][c] for c in columns] == ["-"] * len(columns)
    assert "-" not in rows["plgbm"]  # the other model's manifest is whole
