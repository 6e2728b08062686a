"""Reliability, third round: paths resolved once and written as checked, provenance checked by every
reader, everything checkable checked before the first write, one lock over every root.

Each refusal is checked as a user meets it: exit code 2, one `error: ` line, and the inputs, the
config and every output that existed before byte-identical afterwards.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import Exp, base_config, lock_holder, tiny_pairs
from test_reliability import one_line, refused

STAGES = ("preprocess", "folds", "train", "ensemble", "report")


def small(tmp: Path, **paths) -> Exp:
    """A quick experiment (one linear model, two folds, one method) with its inputs in tmp/in."""
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    tiny_pairs(40, 0).to_csv(tmp / "in" / "train.csv", index=False)
    tiny_pairs(12, 1, labelled=False).to_csv(tmp / "in" / "test.csv", index=False)
    cfg = base_config(tmp)
    cfg["models"] = cfg["models"][:1]
    cfg["folds"]["n_splits"] = 2
    cfg["ensemble"] = {"methods": ["vote"], "submit": "vote"}
    cfg["paths"].update(paths)
    e = Exp(tmp, tmp / "tiny.yaml")
    e.write_config(cfg)
    return e


def files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


# ----------------------------------------------------------------------------- 2. paths


def random_layout(rng: random.Random, tmp: Path) -> dict[str, str]:
    """paths.* drawn from places that overlap each other, the inputs and the config's folder, with
    `~`, relative and linked spellings."""
    (tmp / "link_to_in").symlink_to(tmp / "in")
    (tmp / "link_to_top").symlink_to(tmp)
    places = [str(tmp / "a"), str(tmp / "b"), str(tmp), str(tmp / "in"), "~", "~/x", str(tmp / "link_to_in"),
              str(tmp / "link_to_top"), str(tmp / "a" / ".." / "b"), str(tmp / "work")]
    return {k: rng.choice(places) for k in ("work", "models", "submissions", "reports")}


def written_outside(before: dict[Path, bytes], after: dict[Path, bytes], allowed: list[Path]) -> list[Path]:
    new = [p for p in after if p not in before or before[p] != after[p]]
    return [p for p in new if not any(p.resolve().is_relative_to(a) for a in allowed)]


@pytest.mark.parametrize("seed", range(6))
def test_random_paths_never_write_outside_their_roots_nor_over_an_input(tmp_path, monkeypatch, capsys, seed):
    """Whatever paths.* say, every stage either refuses with one line or writes only inside the
    experiment's resolved folders; the inputs and the config never change."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    e = small(tmp_path)
    layout_paths = random_layout(random.Random(seed), tmp_path)
    cfg = yaml.safe_load(e.config.read_text())
    cfg["paths"] = layout_paths
    e.write_config(cfg)
    inputs = {p: p.read_bytes() for p in [e.config, *sorted((tmp_path / "in").iterdir())]}
    before = files(tmp_path)
    roots = [Path(os.path.expanduser(v)).resolve() for v in layout_paths.values()]
    allowed = [r / "tiny" for r in roots] + [r for r in roots]   # submissions are files in their root
    for stage in STAGES:
        code = e.run(stage)
        if code == 2:
            one_line(capsys)
            break
        assert code == 0, stage
    assert {p: p.read_bytes() for p in inputs} == inputs
    outside = written_outside(before, files(tmp_path) | files(home), allowed)
    assert outside == []


def test_tilde_is_the_home_folder_for_the_check_and_the_write(tmp_path, monkeypatch, capsys):
    """paths.reports: '~' with the config and data in a folder literally named `~`: the report goes
    to the home folder (the check's meaning), the `~` folder is left alone."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    tilde = tmp_path / "~"
    tilde.mkdir()
    monkeypatch.chdir(tmp_path)
    e = small(tilde, reports="~")
    inside = files(tilde)
    for stage in STAGES:
        assert e.run(stage) == 0, stage
    assert (home / "tiny" / "report.md").is_file()
    assert not (tilde / "tiny").exists() and not (tmp_path / "tiny").exists()
    assert {p: b for p, b in files(tilde).items() if p in inside} == inside


def test_a_model_folder_linked_out_of_its_root_is_refused(tmp_path, capsys):
    e = small(tmp_path)
    for stage in ("preprocess", "folds"):
        assert e.run(stage) == 0
    (tmp_path / "models" / "tiny").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models" / "tiny" / "lr").symlink_to(tmp_path)   # the config's folder
    before = files(tmp_path)
    line = refused(e, capsys, "train")
    assert "outside paths.models" in line and "link" in line
    assert files(tmp_path) == before


@pytest.mark.parametrize("change, words", [
    ({"paths": {"models": "work"}, "model": "prepared"}, "would share a place"),
    ({"paths": {"reports": "work"}}, "would share a place"),
    ({"paths": {"models": "reports"}}, "would share a place"),
    ({"experiment": "tiny_stack"}, "ends in '_stack'"),
])
def test_two_stages_or_experiments_never_share_a_place(tmp_path, capsys, change, words):
    e = small(tmp_path)
    cfg = yaml.safe_load(e.config.read_text())
    for key, where in change.get("paths", {}).items():
        cfg["paths"][key] = str(tmp_path / where)
    if "model" in change:
        cfg["models"][0]["name"] = change["model"]
    if "experiment" in change:
        cfg["experiment"] = change["experiment"]
    e.write_config(cfg)
    before = files(tmp_path)
    for stage in STAGES:
        assert words in refused(e, capsys, stage), stage
    assert files(tmp_path) == before


def test_pretrain_never_reads_what_it_replaces(tmp_path, capsys):
    e = small(tmp_path)
    cfg = yaml.safe_load(e.config.read_text())
    own = tmp_path / "work" / "tiny" / "pretrained" / "mlm"
    own.mkdir(parents=True)
    (own / "config.json").write_text("{}")
    cfg["pretrain"] = {"name": "mlm", "backbone": str(own)}
    e.write_config(cfg)
    before = files(tmp_path)
    assert "that stage replaces" in refused(e, capsys, "pretrain")
    assert files(tmp_path) == before


# ----------------------------------------------------------------------------- 3. provenance


def pseudo_exp(tmp: Path) -> Exp:
    e = small(tmp)
    cfg = yaml.safe_load(e.config.read_text())
    cfg["models"] = base_config(tmp)["models"]
    cfg["pseudo"] = {"enabled": True, "min_votes": 1, "min_confidence": 0.6}
    e.write_config(cfg)
    for stage in ("preprocess", "folds", "train", "pseudo_label"):
        assert e.run(stage) == 0, stage
    return e


@pytest.mark.parametrize("args, words", [
    (["pseudo.soft=true"], "pseudo.soft: False -> True"),
    (["pseudo.min_confidence=0.8"], "pseudo.min_confidence: 0.6 -> 0.8"),
    (["pseudo.rounds=2", "ensemble.round=2"], "round 2 was not made"),
    (["pseudo.enabled=false"], "pseudo.enabled=false"),
])
def test_students_are_combined_only_under_the_rules_they_were_made_with(tmp_path, capsys, args, words):
    e = pseudo_exp(tmp_path)
    before = files(tmp_path)
    for stage in ("ensemble", "report"):
        line = refused(e, capsys, stage, "ensemble.round=1", *args)
        assert words in line, line
    assert files(tmp_path) == before
    assert e.run("ensemble", "ensemble.round=1") == 0


# ----------------------------------------------------------------------------- 4. before the first write


def test_a_bad_backbone_is_refused_before_any_model_trains(tmp_path, capsys):
    e = small(tmp_path)
    cfg = yaml.safe_load(e.config.read_text())
    cfg["models"] = base_config(tmp_path)["models"]
    e.write_config(cfg)
    for stage in ("preprocess", "folds", "train"):
        assert e.run(stage) == 0
    before = files(tmp_path)
    line = refused(e, capsys, "train", "models.lr.params.C=3", f"models.plgbm.params.embed={tmp_path / 'nope'}")
    assert "model 'plgbm'" in line and "nope" in line
    assert files(tmp_path) == before   # lr was not retrained first


def test_the_lock_covers_every_root_whichever_path_points_there(tmp_path, capsys):
    e = small(tmp_path)
    child = lock_holder(e.config)
    try:
        for other in (["paths.work=" + str(tmp_path / "w2")],
                      ["paths.work=" + str(tmp_path / "w3"), "paths.models=" + str(tmp_path / "m3"),
                       "paths.reports=" + str(tmp_path / "r3")]):
            assert f"in use by process {child.pid}" in refused(e, capsys, "preprocess", *other)
    finally:
        child.kill()
        child.wait()


# ----------------------------------------------------------------------------- 6. smaller


def test_a_test_file_that_repeats_train_rows_is_named(tmp_path, caplog):
    e = small(tmp_path)
    train = pd.read_csv(tmp_path / "in" / "train.csv")
    train.drop(columns=["label"]).head(12).to_csv(tmp_path / "in" / "test.csv", index=False)
    with caplog.at_level(logging.WARNING):
        assert e.run("preprocess") == 0
    assert "12 of 12 test rows have the same texts as a train row (is data.test the train file?)" in caplog.text


def test_the_retrain_hint_repeats_the_overrides_of_the_run(tmp_path, capsys):
    e = small(tmp_path)
    for stage in ("preprocess", "folds", "train"):
        assert e.run(stage, "experiment=other") == 0
    line = refused(e, capsys, "ensemble", "experiment=other", "models.lr.params.C=0.5")
    assert "experiment=other" in line and "models.lr.params.C=0.5" in line and "--models lr" in line
