"""Report stage: the page and plots exist and every number in its tables matches the .npy matrices."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, log_loss

from conftest import tiny_pairs

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ("fold_scores.png", "correlation.png", "confusion.png", "reliability.png")


def md_tables(page: str, heading: str) -> list[list[list[str]]]:
    """The Markdown tables under `## heading` (up to the next heading), as lists of cell rows."""
    section = page.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    tables, current = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def as_dict(table: list[list[str]]) -> dict[str, dict[str, str]]:
    """{first cell: {column: cell}} of a parsed table."""
    head = table[0]
    return {row[0]: dict(zip(head[1:], row[1:])) for row in table[1:]}


def close(cell: str, value: float) -> bool:
    return abs(float(cell) - value) <= 5e-5  # the page shows 4 decimals


@pytest.fixture
def labelled(prepared):
    """The tiny experiment with a labelled test file and one pseudo-label round, ready to report."""
    tiny_pairs(30, 1).to_csv(prepared.tmp / "in" / "test.csv", index=False)
    cfg = yaml.safe_load(prepared.config.read_text())
    cfg["data"]["test_label"] = "label"
    cfg["pseudo"] = {"enabled": True, "rounds": 1, "min_confidence": 0.6}
    prepared.write_config(cfg)
    for stage in ("preprocess", "train", "pseudo_label", "ensemble"):
        assert prepared.run(stage) == 0, stage
    return prepared


def test_report_numbers_match_the_matrices(labelled):
    assert labelled.run("report") == 0
    out = labelled.tmp / "reports" / "tiny"
    for name in PLOTS + ("pseudo_rounds.png", "report.md", "report.json", "config.yaml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in PLOTS + ("pseudo_rounds.png",):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.md").read_text()
    y = pd.read_csv(labelled.tmp / "in" / "train.csv")["label"].to_numpy()
    test_y = pd.read_csv(labelled.tmp / "in" / "test.csv")["label"].to_numpy()
    folds = pd.read_csv(labelled.tmp / "work" / "tiny" / "folds.csv")["fold"].to_numpy()
    oof = {m: np.load(labelled.models / m / "oof.npy") for m in ("lr", "plgbm")}
    ens = np.load(labelled.models / "ensembles" / "stack" / "oof.npy")

    models = as_dict(md_tables(page, "Models")[0])
    for m, p in oof.items():
        assert close(models[m]["oof accuracy"], accuracy_score(y, p.argmax(1)))
        assert close(models[m]["oof logloss"], log_loss(y, np.clip(p, 1e-7, 1), labels=[0, 1]))
        test = np.load(labelled.models / m / "test.npy")
        assert close(models[m]["test accuracy"], accuracy_score(test_y, test.argmax(1)))
    assert close(models["[stack]"]["oof accuracy"], accuracy_score(y, ens.argmax(1)))

    per_fold = as_dict(md_tables(page, "accuracy per fold")[0])
    for m, p in {**oof, "[stack]": ens}.items():
        for k in range(3):
            rows = folds == k
            assert close(per_fold[m][f"fold{k}"], accuracy_score(y[rows], p[rows].argmax(1)))

    corr = as_dict(md_tables(page, "OOF correlation")[0])
    assert close(corr["lr"]["plgbm"], np.corrcoef(oof["lr"][:, 1], oof["plgbm"][:, 1])[0, 1])

    confusion = as_dict(md_tables(page, "Ensemble: stack")[0])
    pred = ens.argmax(1)
    for t in (0, 1):
        for p in (0, 1):
            assert int(confusion[f"true {t}"][f"pred {p}"]) == int(((y == t) & (pred == p)).sum())


def test_report_shows_each_pseudo_label_round(labelled):
    assert labelled.run("report") == 0
    page = (labelled.tmp / "reports" / "tiny" / "report.md").read_text()
    counts, rounds = md_tables(page, "Pseudo-label rounds")
    pseudo = pd.read_csv(labelled.tmp / "work" / "tiny" / "pseudo" / "r1.csv")
    assert as_dict(counts)["1"]["pseudo rows"] == str(len(pseudo)) and len(pseudo) > 0
    scores = as_dict(rounds)
    test_y = pd.read_csv(labelled.tmp / "in" / "test.csv")["label"].to_numpy()
    y = pd.read_csv(labelled.tmp / "in" / "train.csv")["label"].to_numpy()
    for r, where in (("0", labelled.models), ("1", labelled.models / "rounds" / "r1")):
        for m in ("lr", "plgbm"):
            oof, test = np.load(where / m / "oof.npy"), np.load(where / m / "test.npy")
            assert close(scores[r][f"{m} oof accuracy"], accuracy_score(y, oof.argmax(1)))
            assert close(scores[r][f"{m} test accuracy"], accuracy_score(test_y, test.argmax(1)))
    assert "[stack] oof accuracy" in rounds[0] and "[stack] test accuracy" in rounds[0]


def test_report_needs_the_ensemble_and_says_so_in_one_line(prepared, capsys):
    assert prepared.run("train") == 0
    assert prepared.run("report") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run `python -m pipeline.ensemble` first" in err[0]
    assert not (prepared.tmp / "reports" / "tiny" / "report.md").exists()
    assert prepared.run("ensemble") == 0
    assert prepared.run("report") == 0
    out = prepared.tmp / "reports" / "tiny"
    assert "Pseudo-labelling is off" in (out / "report.md").read_text()
    assert not (out / "pseudo_rounds.png").exists()


def test_importing_the_package_leaves_matplotlib_alone():
    code = "import sys, pipeline.report, pipeline.pseudo_label; print('matplotlib' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
