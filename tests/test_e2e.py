"""End to end through the scripts a user runs: run_all.sh, inspect, one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_run_all_on_tiny_config_then_inspect(exp):
    r = sh("bash", str(ROOT / "run_all.sh"), str(exp.config))
    assert r.returncode == 0, r.stderr[-2000:]
    sub = pd.read_csv(exp.tmp / "subs" / "tiny.csv", dtype=str)
    assert len(sub) == 30 and sub["id"].is_unique
    r = sh(sys.executable, "-m", "pipeline.inspect_models", str(exp.models),
           "--labels", str(exp.tmp / "work" / "tiny" / "prepared" / "train.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "OOF correlation" in r.stdout and "plgbm" in r.stdout and "fold2" in r.stdout


def one_line_error(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns=["text_b"]), "missing column 'text_b' (columns found: id, text_a, label)"),
    (lambda d: d.assign(id=["same"] * len(d)), "duplicate id 'same'"),
    (lambda d: d.assign(text_a=[""] + d["text_a"].tolist()[1:]), "row 1: empty text in column 'text_a'"),
])
def test_bad_train_file_one_line_and_outputs_intact(exp, change, message):
    assert sh("bash", str(ROOT / "run_all.sh"), str(exp.config)).returncode == 0
    outputs = {p: p.read_bytes() for p in exp.tmp.rglob("*") if p.is_file() and "in" not in p.parts}
    assert exp.tmp / "subs" / "tiny.csv" in outputs and exp.models / "lr" / "oof.npy" in outputs
    path = exp.tmp / "in" / "train.csv"
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    line = one_line_error(sh(sys.executable, "-m", "pipeline.preprocess", str(exp.config)))
    assert message in line
    assert outputs == {p: p.read_bytes() for p in outputs}


def test_unseen_test_label_and_missing_file(exp):
    test = pd.read_csv(exp.tmp / "in" / "test.csv")
    test["label"] = ["0"] * (len(test) - 1) + ["7"]
    test.to_csv(exp.tmp / "in" / "test.csv", index=False)
    line = one_line_error(sh(sys.executable, "-m", "pipeline.preprocess", str(exp.config), "data.test_label=label"))
    assert "label '7' not seen in train" in line
    line = one_line_error(sh(sys.executable, "-m", "pipeline.preprocess", str(exp.config), "data.train=nope.csv"))
    assert "file not found" in line and "nope.csv" in line
    line = one_line_error(sh(sys.executable, "-m", "pipeline.train", str(exp.config)))
    assert "run `python -m pipeline.preprocess` first" in line


def test_demo_config_runs_a_pseudo_label_round_shown_in_the_report(tmp_path):
    """configs/default.yaml as shipped (its MiniLM swapped for a tiny random BERT, fewer rows and
    trees): run_all.sh trains, runs one pseudo-label round and the report shows it."""
    from conftest import tiny_bert
    from pipeline.synthetic import write_demo

    write_demo(tmp_path / "demo", n_train=120, n_test=40)
    words = sorted({w for t in pd.read_csv(tmp_path / "demo" / "train.csv")["text_a"] for w in t.lower().split()})
    bert = tiny_bert(tmp_path / "bert", words)
    overrides = [f"data.dir={tmp_path / 'demo'}", f"paths.work={tmp_path / 'work'}",
                 f"paths.models={tmp_path / 'models'}", f"paths.submissions={tmp_path / 'subs'}",
                 f"paths.reports={tmp_path / 'reports'}", f"models.minilm.params.backbone={bert}",
                 "models.minilm.params.epochs=1", "models.minilm.params.max_length=32",
                 "models.minilm.params.batch_size=32", "models.pair_lgbm.params.n_estimators=20"]
    r = sh("bash", str(ROOT / "run_all.sh"), "configs/default.yaml", *overrides)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "== pseudo_label done" in r.stdout
    pseudo = pd.read_csv(tmp_path / "work" / "demo" / "pseudo" / "r1.csv")
    page = (tmp_path / "reports" / "demo" / "report.md").read_text()
    assert "Pseudo-label rounds" in page
    section = page.split("Pseudo-label rounds", 1)[1]
    lines = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0]]
    row = dict(zip(head, (c.strip() for c in next(cells for cells in lines if cells[0].strip() == "1"))))
    assert row["pseudo rows"] == str(len(pseudo)), row
    assert (tmp_path / "models" / "demo" / "rounds" / "r1" / "tfidf_lr" / "oof.npy").exists()
    assert not (tmp_path / "models" / "demo" / "rounds" / "r1" / "minilm").exists()   # a teacher, not a student
