"""Reliability, second round: names that become paths, outputs that would overwrite inputs, stages
whose outputs land together or not at all, stale models, deleted fold files, submission ids,
numbers that make no sense and two processes on one experiment.

Each refusal is checked as a user meets it: exit code 2, one `error: ` line, and every file that
existed before byte-identical afterwards.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import string
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, Exp, base_config, lock_holder, tiny_pairs
from pipeline import layout, names
from pipeline.config import load_config
from pipeline.faults import ENOSPC_AT
from test_reliability import assert_unchanged, done, make_exp, one_line, refused, snapshot, template  # noqa: F401


def everything(root: Path) -> dict[Path, bytes]:
    """Every file under root, inputs and config included."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def with_config(e: Exp, **changes) -> None:
    cfg = base_config(e.tmp)
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    e.write_config(cfg)


# ----------------------------------------------------------------------------- outputs vs inputs


@pytest.mark.parametrize("stage", ["preprocess", "folds", "train", "ensemble", "report", "pseudo_label"])
def test_submission_over_the_test_file_is_refused_by_every_stage(exp, capsys, stage):
    """`experiment=test data.dir=D paths.submissions=D` would make D/test.csv the submission."""
    before = everything(exp.tmp)
    line = refused(exp, capsys, stage, "experiment=test", f"paths.submissions={exp.tmp / 'in'}")
    assert "would replace data.test" in line and "test.csv" in line
    assert everything(exp.tmp) == before


@pytest.mark.parametrize("overrides, what", [
    (lambda t: [f"paths.work={t}", "experiment=in"], "data.train"),              # prepared/ beside the inputs is fine,
    (lambda t: [f"paths.models={t}", "experiment=in"], "data.train"),            # but models/<exp> = the input folder is not
    (lambda t: [f"paths.reports={t}", "experiment=in"], "data.train"),
    (lambda t: ["experiment=train", f"paths.submissions={t / 'in'}"], "data.train"),
])
def test_outputs_never_take_an_inputs_place(exp, capsys, overrides, what):
    before = everything(exp.tmp)
    ov = overrides(exp.tmp)
    if ov[0].startswith("paths.work"):
        # work/<exp>/ itself may hold the inputs (only prepared/, pseudo/ and the folds files are ours)
        assert exp.run("preprocess", *ov) == 0
        return
    line = refused(exp, capsys, "preprocess", *ov)
    assert what in line
    assert everything(exp.tmp) == before


def test_config_file_is_never_overwritten(tmp_path, capsys):
    """A config saved as work/<exp>/config.yaml would be replaced by the folds stage's resolved config."""
    e = make_exp(tmp_path)
    cfg_path = tmp_path / "work" / "tiny" / "config.yaml"
    cfg_path.parent.mkdir(parents=True)
    shutil.move(e.config, cfg_path)
    e = Exp(tmp_path, cfg_path)
    before = everything(tmp_path)
    assert e.run("preprocess") == 2
    assert "would replace the config file" in one_line(capsys)
    assert everything(tmp_path) == before


def test_a_link_to_an_input_is_seen_through(exp, capsys):
    (exp.tmp / "alias").symlink_to(exp.tmp / "in")
    before = everything(exp.tmp)
    line = refused(exp, capsys, "preprocess", "experiment=test", f"paths.submissions={exp.tmp / 'alias'}")
    assert "would replace data.test" in line
    assert everything(exp.tmp) == before


# ----------------------------------------------------------------------------- names


BAD_NAMES = ["", "..", ".", "../a", "../../../tmp/x", "/tmp/x", "a/b", "a\\b", " a", "a b", "a\nb", "x" * 65,
             "naïve", "-lead", "_x", "a.b", "ensembles"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_experiment_and_model_names_are_one_line(exp, capsys, name):
    before = everything(exp.tmp)
    cfg = base_config(exp.tmp)
    if name != "ensembles":  # a reserved model folder; a valid experiment name
        cfg["experiment"] = name
        exp.write_config(cfg)
        assert "experiment=" in refused(exp, capsys, "preprocess")
    cfg = base_config(exp.tmp)
    cfg["models"][0]["name"] = name
    exp.write_config(cfg)
    before = everything(exp.tmp)
    line = refused(exp, capsys, "preprocess")
    assert "models[0].name=" in line and "\n" not in line and len(line) < 400
    assert everything(exp.tmp) == before


def random_name(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "._-/\\ \n\t$~*?é漢\x00" + "." * 8 + "/" * 8
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 3, 5, 12, 70, 300])))


def files_outside(roots: list[Path], top: Path) -> list[Path]:
    return [p for p in top.rglob("*") if p.is_file() and not any(p.is_relative_to(r) for r in roots)]


def test_random_names_never_write_outside_the_roots(tmp_path):
    """Property: whatever the experiment and model names, every file written lies under one of the
    configured roots (the names are refused, or they are identifiers that stay inside)."""
    rng = random.Random(0)
    sandbox = tmp_path / "sandbox" / "deep" / "er"
    e = make_exp(sandbox)
    cwd_before = sorted(os.listdir(ROOT))
    top = tmp_path / "sandbox"
    for trial in range(25):
        cfg = base_config(sandbox)
        cfg["experiment"] = random_name(rng) if trial % 2 else "ok"
        cfg["models"] = cfg["models"][:1]
        cfg["models"][0]["name"] = random_name(rng)
        e.write_config(cfg)
        for stage in ("preprocess", "folds", "train"):
            if e.run(stage) != 0:
                break
        roots = [sandbox / d for d in ("in", "work", "models", "subs", "reports")] + [e.config]
        assert files_outside(roots, top) == [], (cfg["experiment"], cfg["models"][0]["name"])
        for d in ("models", "work"):
            for p in (sandbox / d).glob("*"):
                assert names.NAME.fullmatch(p.name), p
    assert sorted(os.listdir(ROOT)) == cwd_before


# ----------------------------------------------------------------------------- all or nothing


def test_ensemble_failing_on_its_last_write_changes_nothing(done, capsys, monkeypatch):
    """The ensemble computes new matrices (another stack_c) and then the disk fills on the submission:
    its matrices, summary, config and submissions all stay the old ones."""
    before = snapshot(done.tmp)
    monkeypatch.setenv(ENOSPC_AT, "write:*/subs/tiny.csv")
    line = refused(done, capsys, "ensemble", "ensemble.stack_c=0.01")
    assert "cannot write" in line and "tiny.csv" in line
    assert_unchanged(before, done.tmp)
    assert not list(done.tmp.rglob(".*.tmp"))


@pytest.mark.parametrize("stage, where", [("preprocess", "write:*/prepared/meta.json"),
                                          ("folds", "write:*/tiny/folds.json"),
                                          ("report", "write:*/report.md")])
def test_other_stages_commit_together(done, capsys, monkeypatch, stage, where):
    if stage == "report":
        assert done.run("report") == 0
    before = snapshot(done.tmp)
    args = {"preprocess": ["preprocess.lemmatizer=none"], "folds": ["--force", "folds.seed=9"], "report": []}[stage]
    monkeypatch.setenv(ENOSPC_AT, where)
    assert done.run(stage, *args) == 2
    one_line(capsys)
    assert_unchanged(before, done.tmp)


# ----------------------------------------------------------------------------- stale models


@pytest.mark.parametrize("change, said", [
    ({"models.0.params.C": 0.5}, "params.C: 4.0 -> 0.5"),
    ({"models.0.view": "lemma"}, "view: 'lower' -> 'lemma'"),
    ({"models.0.kind": "tfidf_lgbm", "models.0.params": {"n_estimators": 5}}, "kind: 'tfidf_lr' -> 'tfidf_lgbm'"),
    ({"metric": "f1"}, "metric"),
])
@pytest.mark.parametrize("stage", ["ensemble", "report"])
def test_stale_model_refused_naming_what_changed(done, capsys, change, said, stage):
    assert done.run("report") == 0
    cfg = base_config(done.tmp)
    for dotted, value in change.items():
        node = cfg
        *path, last = dotted.split(".")
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    done.write_config(cfg)
    before = snapshot(done.tmp)
    line = refused(done, capsys, stage)
    assert "'lr'" in line and said in line and "python -m pipeline.train" in line and "--models lr" in line
    assert_unchanged(before, done.tmp)


def test_stale_teacher_refused_by_pseudo_label(done, capsys):
    line = refused(done, capsys, "pseudo_label", "pseudo.enabled=true", "models.plgbm.params.num_leaves=7")
    assert "'plgbm'" in line and "params.num_leaves: 31 -> 7" in line


# ----------------------------------------------------------------------------- fold files


@pytest.mark.parametrize("damage", ["fold dir", "checkpoint", "fold record"])
def test_missing_fold_files_are_retrained(done, caplog, damage):
    lr = done.models / "lr"
    kept = {k: (lr / f"fold{k}" / "fold.json").stat().st_mtime_ns for k in (0, 1)}
    if damage == "fold dir":
        shutil.rmtree(lr / "fold2")
    elif damage == "checkpoint":
        (lr / "fold2" / "lr_coef.npy").unlink()
    else:
        (lr / "fold2" / "fold.json").write_text("{}")
    caplog.set_level("INFO")
    assert done.run("train", "--models", "lr") == 0
    assert "up to date" not in caplog.text and "lr fold 3/3: accuracy" in caplog.text
    assert (lr / "fold2" / "lr_coef.npy").is_file()
    assert {k: (lr / f"fold{k}" / "fold.json").stat().st_mtime_ns for k in (0, 1)} == kept  # reused
    caplog.clear()
    assert done.run("train", "--models", "lr") == 0
    assert "lr: up to date" in caplog.text


# ----------------------------------------------------------------------------- ids


def _ids_exp(tmp: Path, test_df: pd.DataFrame) -> Exp:
    e = make_exp(tmp)
    test_df.to_csv(tmp / "in" / "test.csv", index=False)
    cfg = base_config(tmp)
    cfg["data"]["id"] = None
    cfg["models"] = cfg["models"][:1]
    e.write_config(cfg)
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert e.run(stage) == 0, stage
    return e


def test_submission_ids_come_from_the_test_files_id_column(tmp_path, capsys):
    test = tiny_pairs(30, 1, labelled=False).rename(columns={"id": "ID"})
    test["ID"] = [f"q{1000 + i}" for i in range(30)]
    e = _ids_exp(tmp_path, test)
    sub = pd.read_csv(tmp_path / "subs" / "tiny.csv", dtype=str)
    assert list(sub.columns) == ["ID", "label"] and sub["ID"].tolist() == test["ID"].tolist()
    summary = json.loads((e.models / "ensembles" / "summary.json").read_text())
    assert summary["test_ids"] == "column 'ID' (detected)"


def test_row_number_ids_are_said_in_log_and_summary(tmp_path, capsys, caplog):
    e = _ids_exp(tmp_path, tiny_pairs(30, 1, labelled=False).drop(columns=["id"]))
    assert "the submission ids will be row numbers" in caplog.text
    assert "ids: row numbers 0..n-1" in capsys.readouterr().out
    summary = json.loads((e.models / "ensembles" / "summary.json").read_text())
    assert summary["test_ids"] == "row numbers"
    assert pd.read_csv(tmp_path / "subs" / "tiny.csv")["id"].tolist() == list(range(30))


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("override, said", [
    ("data.max_test_rows=-5", "data.max_test_rows=-5 must be at least 1"),
    ("data.max_train_rows=0", "data.max_train_rows=0 must be at least 1"),
    ("folds.n_splits=1", "folds.n_splits=1 must be at least 2"),
    ("ensemble.stack_c=0", "ensemble.stack_c=0.0 must be positive"),
    ("ensemble.round=-1", "ensemble.round=-1 must be 0 or more"),
    ("pseudo.rounds=0", "pseudo.rounds=0 must be at least 1"),
    ("pseudo.min_confidence=1.5", "pseudo.min_confidence=1.5 must be between 0 and 1"),
    ("pseudo.min_votes=0", "pseudo.min_votes=0 must be at least 1"),
    ("data.sep=;;", "data.sep=';;' must be one character"),
    ("folds.seed=-1", "folds.seed=-1 must be between 0 and 2147483647"),
    ("seed=99999999999999", "seed=99999999999999 must be between 0 and 2147483647"),
    ("ensemble.models=[]", "ensemble.models=[] must be null (every model) or a non-empty list"),
    ("pseudo.retrain=[]", "pseudo.retrain=[] must be null (every model) or a non-empty list"),
    ("ensemble.stack_c=.inf", "ensemble.stack_c must be a finite number, got inf"),
    ("pseudo.min_confidence=.nan", "pseudo.min_confidence must be a finite number, got nan"),
])
def test_numbers_that_make_no_sense_are_one_line(exp, capsys, override, said):
    before = everything(exp.tmp)
    assert said in refused(exp, capsys, "preprocess", override)
    assert everything(exp.tmp) == before


def test_json_lines_ids_kept_exactly_as_written(tmp_path):
    e = make_exp(tmp_path)
    test = tiny_pairs(30, 1, labelled=False)
    lines = [json.dumps({"text_a": a, "text_b": b}).replace("{", f'{{"id": {i}e5, ', 1)
             for i, (a, b) in enumerate(zip(test["text_a"], test["text_b"]), 1)]
    (tmp_path / "in" / "test.jsonl").write_text("\n".join(lines) + "\n")
    cfg = base_config(tmp_path)
    cfg["data"]["test"] = "test.jsonl"
    cfg["models"] = cfg["models"][:1]
    e.write_config(cfg)
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert e.run(stage) == 0, stage
    ids = pd.read_csv(tmp_path / "subs" / "tiny.csv", dtype=str)["id"].tolist()
    assert ids == [f"{i}e5" for i in range(1, 31)]


def test_a_second_process_on_the_experiment_is_refused_naming_the_holder(exp, capsys):
    cfg = load_config(exp.config)
    child = lock_holder(exp.config)
    try:
        before = everything(exp.tmp)
        line = refused(exp, capsys, "preprocess")
        assert f"in use by process {child.pid}" in line
        assert everything(exp.tmp) == before
    finally:
        child.kill()
        child.wait()
    assert exp.run("preprocess") == 0  # the lock died with its holder
    assert layout.work_dir(cfg).is_dir()


@pytest.mark.parametrize("change", ["ensemble settings", "a model retrained"])
def test_report_refuses_an_ensemble_older_than_its_inputs(done, capsys, change):
    if change == "ensemble settings":
        args = ["ensemble.stack_c=0.5"]
    else:
        args = []
        assert done.run("train", "--models", "lr", "--force", "models.lr.params.C=1.0") == 0
        cfg = base_config(done.tmp)
        cfg["models"][0]["params"]["C"] = 1.0
        done.write_config(cfg)
    line = refused(done, capsys, "report", *args)
    assert "summary.json is stale" in line and "python -m pipeline.ensemble" in line
    assert done.run("ensemble", *args) == 0 and done.run("report", *args) == 0


def test_submission_of_probabilities(done, capsys):
    """ensemble.submit_values=probabilities: one column per class, the submitted method's test.npy."""
    import numpy as np

    assert done.run("ensemble", "ensemble.submit_values=probabilities") == 0
    sub = pd.read_csv(done.tmp / "subs" / "tiny.csv", dtype={"id": str})
    summary = json.loads((done.models / "ensembles" / "summary.json").read_text())
    test = np.load(done.models / "ensembles" / summary["submitted"] / "test.npy")
    assert list(sub.columns) == ["id", "0", "1"]
    assert np.allclose(sub[["0", "1"]].to_numpy(), test, atol=1e-6)
    assert done.run("ensemble") == 0
    assert list(pd.read_csv(done.tmp / "subs" / "tiny.csv").columns) == ["id", "label"]
