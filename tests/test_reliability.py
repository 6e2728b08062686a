"""Reliability: corrupted and misaligned artifacts, hostile input, full disks, reproducibility, safe loading.

Every refusal is checked the way a user meets it: the stage's exit code 2, one line on stderr that
starts with `error: ` and names the file, and nothing downstream written (files byte-identical).
The kill-at-any-moment harness, which needs real processes, is in test_kill.py.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, Exp, base_config, tiny_pairs
from pipeline.artifacts import mixed_versions
from pipeline.fileio import safe_load_safetensors
from pipeline.errors import PipelineError
from pipeline.faults import ENOSPC_AT
from pipeline.fileio import read_json, read_npy, sha256_file, write_json

STAGES = ("preprocess", "folds", "train", "ensemble")


# ----------------------------------------------------------------------------- helpers


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def refused(e: Exp, capsys, stage: str, *args: str) -> str:
    """Run a stage that must refuse; return its one error line."""
    capsys.readouterr()
    assert e.run(stage, *args) == 2
    return one_line(capsys)


def snapshot(root: Path) -> dict[Path, bytes]:
    """Every output file (inputs under in/ left out) and its bytes."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in ("in", "tiny.yaml")}


def assert_unchanged(before: dict[Path, bytes], root: Path) -> None:
    after = snapshot(root)
    assert sorted(after) == sorted(before), set(after) ^ set(before)
    changed = [str(p) for p in before if before[p] != after[p]]
    assert not changed, changed


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def set_hash(model_dir: Path, name: str) -> None:
    """Make the manifest agree with a file we changed on purpose (a consistent forgery)."""
    m = read_json(model_dir / "manifest.json")
    m["files"][name] = sha256_file(model_dir / name)
    write_json(model_dir / "manifest.json", m)


def make_exp(root: Path) -> Exp:
    (root / "in").mkdir(parents=True, exist_ok=True)
    tiny_pairs(90, 0).to_csv(root / "in" / "train.csv", index=False)
    tiny_pairs(30, 1, labelled=False).to_csv(root / "in" / "test.csv", index=False)
    e = Exp(root, root / "tiny.yaml")
    e.write_config(base_config(root))
    return e


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One full run (every stage), copied by `done` so that each test pays for a copy, not a run."""
    e = make_exp(tmp_path_factory.mktemp("template"))
    for stage in STAGES:
        assert e.run(stage) == 0
    return e.tmp


@pytest.fixture
def done(template, tmp_path) -> Exp:
    """A finished experiment of its own: the template's files under tmp_path, prepared data renewed
    (the prepared-data record holds the data directory, which moved)."""
    for name in ("in", "work", "models", "subs"):
        shutil.copytree(template / name, tmp_path / name)
    e = Exp(tmp_path, tmp_path / "tiny.yaml")
    e.write_config(base_config(tmp_path))
    assert e.run("preprocess") == 0
    return e


# ----------------------------------------------------------------------------- 2. corruption


def _truncate(d: Path) -> None:
    p = d / "oof.npy"
    p.write_bytes(p.read_bytes()[:-7])


def _rows(d: Path, n: int) -> None:
    np.save(d / "oof.npy", np.load(d / "oof.npy")[:n])


def _edit_manifest(d: Path, **kv) -> None:
    m = read_json(d / "manifest.json")
    m.update(kv)
    write_json(d / "manifest.json", m)


CORRUPTIONS = {
    "truncated npy": (_truncate, "lr/oof.npy does not match its sha256 in {d}/manifest.json"),
    "truncated npy, manifest forged": (lambda d: (_truncate(d), set_hash(d, "oof.npy")),
                                       "lr/oof.npy: not a readable .npy matrix (truncated: "),
    "manifest hash wrong": (lambda d: _edit_manifest(d, files={**read_json(d / "manifest.json")["files"],
                                                               "test.npy": "0" * 64}),
                            "lr/test.npy does not match its sha256 in {d}/manifest.json"),
    "oof wrong row count": (lambda d: (_rows(d, 89), set_hash(d, "oof.npy")),
                            "lr/oof.npy has shape (89, 2), {d}/manifest.json says (90, 2)"),
    "oof wrong row count, manifest forged": (lambda d: (_rows(d, 89), set_hash(d, "oof.npy"),
                                                        _edit_manifest(d, n_train=89)),
                                             "lr/oof.npy has 89 rows, {root}/work/tiny/folds.csv has 90"),
    "float64 matrix": (lambda d: (np.save(d / "oof.npy", np.load(d / "oof.npy").astype(np.float64)),
                                  set_hash(d, "oof.npy")), "lr/oof.npy holds float64, expected float32"),
    "object array (pickle)": (lambda d: (np.save(d / "oof.npy", np.array([{"a": 1}], dtype=object)),
                                         set_hash(d, "oof.npy")),
                              "lr/oof.npy: refused: it holds pickled Python objects"),
    "a pickle named .npy": (lambda d: ((d / "oof.npy").write_bytes(pickle.dumps(np.zeros((90, 2)))),
                                       set_hash(d, "oof.npy")), "lr/oof.npy: not a readable .npy matrix (no .npy"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_text('{"model": "lr", '),
                          "lr/manifest.json: not valid JSON"),
    "manifest missing a key": (lambda d: _edit_manifest(d, n_train=None),
                               "lr/manifest.json: n_train missing or not int"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_matrix_refused_before_use(done, capsys, name):
    corrupt, message = CORRUPTIONS[name]
    d = done.models / "lr"
    corrupt(d)
    before = snapshot(done.tmp)
    line = refused(done, capsys, "ensemble")
    assert message.format(d=d, root=done.tmp) in line
    assert_unchanged(before, done.tmp)  # no ensemble matrix, summary or submission rewritten


def test_matrices_from_another_test_file_refused(done, capsys):
    """Same ids, other texts: only the prepared-data hashes in the manifests tell them apart."""
    path = done.tmp / "in" / "test.csv"
    df = pd.read_csv(path, dtype=str)
    df["text_a"] = df["text_a"].str.upper()
    df.to_csv(path, index=False)
    assert done.run("preprocess") == 0
    assert done.run("folds") == 0  # the folds are still valid: the train file did not change
    before = snapshot(done.tmp)
    line = refused(done, capsys, "ensemble")
    assert f"{done.models / 'lr' / 'manifest.json'} and the prepared data disagree on prepared_test_sha256" in line
    assert_unchanged(before, done.tmp)
    assert done.run("train") == 0  # retraining is the fix: the fingerprint saw the new test file
    assert done.run("ensemble") == 0


def test_matrices_from_another_train_file_refused(done, capsys):
    path = done.tmp / "in" / "train.csv"
    pd.concat([pd.read_csv(path, dtype=str), tiny_pairs(96, 5).iloc[90:].astype(str)]).to_csv(path, index=False)
    assert done.run("preprocess") == 0
    assert done.run("folds") == 0  # stale folds.csv noticed and recomputed for the 96 rows
    before = snapshot(done.tmp)
    line = refused(done, capsys, "ensemble")
    assert f"{done.models / 'lr' / 'manifest.json'} and {done.tmp / 'work/tiny/folds.csv'} disagree" in line
    assert_unchanged(before, done.tmp)


def test_stale_folds_after_train_file_changed(done, capsys):
    path = done.tmp / "in" / "train.csv"
    df = pd.read_csv(path, dtype=str)
    df.loc[:5, "label"] = df.loc[:5, "label"].map({"0": "1", "1": "0"})
    df.to_csv(path, index=False)
    before = snapshot(done.tmp)
    # train file changed, preprocess not rerun: the prepared data is stale
    line = refused(done, capsys, "train")
    assert f"{done.tmp / 'work/tiny/prepared/meta.json'} was made from another train.csv" in line
    assert done.run("preprocess") == 0
    before = {p: b for p, b in before.items() if "prepared" not in p.parts}
    # preprocess rerun, folds not: folds.csv was made for the old labels
    line = refused(done, capsys, "train")
    assert f"{done.tmp / 'work/tiny/folds.csv'} was made for other train rows or labels" in line
    assert {p: p.read_bytes() for p in before} == before  # no fold, matrix or manifest written


def test_stale_groups_refused(done, capsys):
    """auto_group folds depend on the texts: an edit that merges two groups makes old folds leak."""
    cfg = base_config(done.tmp, folds={"n_splits": 3, "strategy": "auto_group", "seed": 1})
    done.write_config(cfg)
    assert done.run("preprocess") == 0 and done.run("folds", "--force") == 0
    path = done.tmp / "in" / "train.csv"
    df = pd.read_csv(path, dtype=str)
    df.loc[1, "text_b"] = df.loc[0, "text_a"]  # row 1 now shares a sentence with row 0
    df.to_csv(path, index=False)
    assert done.run("preprocess") == 0
    line = refused(done, capsys, "train")
    assert f"{done.tmp / 'work/tiny/folds.csv'} was made for other train groups" in line


def test_damaged_fold_is_named_and_retrained(done, caplog):
    """A resume point that does not match its record is not used: that fold alone is redone."""
    d = done.models / "lr"
    oof = (d / "oof.npy").read_bytes()
    (d / "manifest.json").unlink()
    bad = d / "fold1" / "val_pred.npy"
    bad.write_bytes(bad.read_bytes()[:-5])
    kept = {k: (d / f"fold{k}" / "fold.json").stat().st_ino for k in (0, 2)}
    with caplog.at_level(logging.INFO):
        assert done.run("train") == 0
    assert f"{bad} is missing or does not match its sha256" in caplog.text
    assert {k: (d / f"fold{k}" / "fold.json").stat().st_ino for k in (0, 2)} == kept  # not rewritten
    assert (d / "oof.npy").read_bytes() == oof


def test_safe_load_safetensors_names_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    good = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(good))
    assert safe_load_safetensors(good)["w"].shape == (2, 3)
    cases = {"garbage.safetensors": b"not a safetensors file at all",
             "truncated.safetensors": good.read_bytes()[:-4],
             "pickle.safetensors": pickle.dumps({"w": [1.0, 2.0]}),
             "empty.safetensors": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PipelineError, match=rf"{tmp_path / name}: not a valid safetensors file"):
            safe_load_safetensors(tmp_path / name)
    with pytest.raises(PipelineError, match="file not found"):
        safe_load_safetensors(tmp_path / "missing.safetensors")


def test_transformer_checkpoint_not_safetensors_refused(tmp_path):
    """The transformer's own loader, on a checkpoint whose weights file is not safetensors."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from pipeline.data import Split, Table
    from pipeline.models.base import FitContext
    from pipeline.models.params import TransformerParams
    from pipeline.models.transformer import TransformerModel, load_checkpoint

    words = "good bad movie plot the a was very".split()
    bert = tmp_path / "bert"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(specials + words)})
    tok.save_pretrained(bert)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32)).save_pretrained(bert)
    texts = [" ".join(words[i % 8:] + words[:i % 8]) for i in range(8)]
    table = Table("train", [str(i) for i in range(8)], {v: (texts, None) for v in ("raw", "lower", "lemma")},
                  np.arange(8) % 2)
    tr, va = np.arange(0, 8, 2), np.arange(1, 8, 2)
    p = TransformerParams(backbone=str(bert), max_length=16, epochs=1, batch_size=4, precision="fp32",
                          num_threads=1, warmup=0.0)
    model = TransformerModel(p, 2, "lower").fit(
        Split([(table, tr)], table.y[tr]), Split([(table, va)], table.y[va]),
        FitContext(n_classes=2, seed=0, fold=0, out_dir=tmp_path, score=lambda y, q: 0.0, progress=False))
    ckpt = tmp_path / "ckpt"
    model.save(ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(PipelineError) as e:
        load_checkpoint(ckpt)
    assert str(weights) in str(e.value) and len(str(e.value).splitlines()) == 1


# ----------------------------------------------------------------------------- 3. hostile input


def write(e: Exp, name: str, data: bytes | str) -> None:
    (e.tmp / "in" / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


HEAD = "id,text_a,text_b,label\n"
ROWS = "".join(f"r{i},a{i} b,c d,{i % 2}\n" for i in range(12))
TEST_HEAD = "id,text_a,text_b\n"
TEST_ROWS = "".join(f"t{i},a b,c d\n" for i in range(4))

BAD_INPUT = {
    # name: (file, content, stage, message)
    "empty file": ("train.csv", "", "preprocess", "train.csv: file is empty"),
    "whitespace only": ("test.csv", " \n\n", "preprocess", "test.csv: file is empty"),
    "header only": ("test.csv", TEST_HEAD, "preprocess", "test.csv: no data rows (header only)"),
    "one class only": ("train.csv", HEAD + "".join(f"r{i},a,b,1\n" for i in range(9)), "preprocess",
                       "train.csv: only one class ('1') in column 'label'"),
    "class smaller than K": ("train.csv", HEAD + ROWS + "x1,a,b,2\nx2,c,d,2\n", "folds",
                             "folds.n_splits=3 is larger than the smallest class ('2' has 2 rows)"),
    "not UTF-8": ("test.csv", TEST_HEAD.encode() + b"t1,caf\xe9,x\n", "preprocess",
                  "test.csv: not valid UTF-8 at byte 23 (line 2)"),
    "UTF-16": ("train.csv", (HEAD + ROWS).encode("utf-16"), "preprocess", "train.csv: UTF-16 text"),
    "test lacks a text column": ("test.csv", "id,text_a\nt1,a\n", "preprocess",
                                 "test.csv: missing column 'text_b' (columns found: id, text_a)"),
    "test lacks the id column": ("test.csv", "text_a,text_b\na,b\n", "preprocess", "test.csv: missing column 'id'"),
    "row with an extra field": ("train.csv", HEAD + "r0,a,b,0,surplus\n" + ROWS[ROWS.index("\n") + 1:],
                                "preprocess", "train.csv: cannot parse as csv: a row has more fields than the header"),
    "repeated column name": ("train.csv", "id,text_a,text_a,text_b,label\nr0,a,b,c,0\n", "preprocess",
                             "train.csv: column names repeated in the header: 'text_a'"),
    "blank id": ("test.csv", TEST_HEAD + TEST_ROWS + ' ,a,b\n', "preprocess", "test.csv row 5: missing id in column 'id'"),
    "unterminated quote": ("train.csv", HEAD + 'r0,"a,b,0\n' + ROWS, "preprocess", "train.csv: cannot parse as csv"),
    "short row: missing label": ("train.csv", HEAD + "z0,a,b\n" + ROWS, "preprocess",
                                 "train.csv row 1: missing label in column 'label'"),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_one_line_nothing_written(exp, capsys, name):
    file, content, stage, message = BAD_INPUT[name]
    write(exp, file, content)
    if stage == "folds":
        assert exp.run("preprocess") == 0
    line = refused(exp, capsys, stage)
    assert message in line
    assert str(exp.tmp / "in") in line or stage == "folds"
    written = {"preprocess": exp.tmp / "work" / "tiny" / "prepared", "folds": exp.tmp / "work" / "tiny" / "folds.csv"}
    assert not written[stage].exists()


def test_tsv_short_row_is_a_missing_label_not_nan(exp, capsys):
    """The python parser (TSV) gives NaN for a missing trailing field; it must not become a class 'nan'."""
    write(exp, "train.tsv", "id\ttext_a\ttext_b\tlabel\n" + "".join(f"r{i}\ta\tb\t{i % 2}\n" for i in range(9))
          + "r9\ta\tb\n")
    line = refused(exp, capsys, "preprocess", "data.train=train.tsv")
    assert "train.tsv row 10: missing label in column 'label'" in line


def odd_but_valid(e: Exp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test files full of things that must simply work (see docs/input-files.md)."""
    train = tiny_pairs(60, 0).astype(str)
    train["label"] = [(" neg" if i % 4 == 0 else "neg ") if v == "0" else ("pos\t" if i % 3 else "pos")
                      for i, v in enumerate(train["label"])]
    train.loc[0, "text_a"] = " ".join(["stock market rose"] * 5600)[:100_000]       # 100k characters
    train.loc[1, "text_a"] = 'line one\nline two\twith a tab\r\nand "quotes", commas\x00 and a NUL'
    train.loc[2, "text_a"] = "股票市场 今天 上涨 了 stock market"
    train.loc[3, "text_b"] = "ارتفعت أسعار الأسهم اليوم 📈🚀 😀"
    train.loc[4, "id"] = 'a,"b"'
    test = tiny_pairs(20, 1, labelled=False).astype(str)
    test["id"] = [f'id,{i}' if i % 3 == 0 else f'q"{i}"' if i % 3 == 1 else f"0{i}é" for i in range(20)]
    test.loc[0, "text_a"] = "x" * 100_000
    test.loc[1, "text_b"] = "中文 العربية 🙂\n\tnew line"
    test["extra"] = "ignored"
    test["label"] = "not used"  # a label column in the test file is ignored unless data.test_label names it
    for name, df in (("train.csv", train), ("test.csv", test)):
        buf = io.StringIO()
        df.to_csv(buf, index=False, lineterminator="\r\n")
        write(e, name, buf.getvalue())
    return train, test


def test_odd_but_valid_input_end_to_end(exp):
    train, test = odd_but_valid(exp)
    for stage in STAGES:
        assert exp.run(stage) == 0, stage
    prepared = exp.tmp / "work" / "tiny" / "prepared"
    assert read_json(prepared / "meta.json")["classes"] == ["neg", "pos"]  # labels stripped
    rows = [json.loads(line) for line in (prepared / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows[0]["raw"][0]) == 100_000
    raw1, lower1 = rows[1]["raw"][0], rows[1]["lower"][0]
    assert raw1 == 'line one\nline two\twith a tab\r\nand "quotes", commas and a NUL'  # NUL dropped, rest kept
    assert lower1 == 'line one line two with a tab and "quotes", commas and a nul'
    assert rows[2]["raw"][0].startswith("股票市场") and rows[3]["raw"][1].endswith("😀")
    assert rows[4]["id"] == 'a,"b"'
    for read in (lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
                 lambda p: pd.DataFrame(list(csv.DictReader(open(p, encoding="utf-8", newline=""))))):
        sub = read(exp.tmp / "subs" / "tiny.csv")
        assert sub.columns.tolist() == ["id", "label"]
        assert sub["id"].tolist() == test["id"].tolist()  # commas, quotes, leading zero, accents
        assert set(sub["label"]) <= {"neg", "pos"}


def test_long_tsv_field(tmp_path):
    """A field over the csv module's 128 KiB default limit (the TSV reader uses it)."""
    from pipeline.config import DataConfig
    from pipeline.data import read_raw

    (tmp_path / "t.tsv").write_text("id\ttext_a\tlabel\n1\t" + "w " * 150_000 + "\t0\n2\tb\t1\n", encoding="utf-8")
    raw = read_raw(DataConfig(train="t.tsv", id="id"), "train", tmp_path)
    assert len(raw.text_a[0]) == 300_000 and raw.labels == ["0", "1"]


# ----------------------------------------------------------------------------- 4. disk full, read-only


# Each stage rewrites identical bytes up to the failing file (same inputs, same seed), so the whole
# tree must come out byte-identical. Training fails on its first write here: a retrained fold's record
# holds new timings; a failure later in training is test_disk_full_after_config_change_keeps_old_model.
FULL_DISK = [
    ("preprocess", (), "write:*/prepared/meta.json"),
    ("folds", ("--force",), "write:*/folds.json"),
    ("train", ("--force",), "write:*/lr/fold0/val_pred.npy"),
    ("ensemble", (), "write:*/subs/tiny_stack.csv"),
]


@pytest.mark.parametrize("stage, args, where", FULL_DISK, ids=[w.split("*/")[1] for _, _, w in FULL_DISK])
def test_disk_full_one_line_earlier_artifacts_intact(done, capsys, monkeypatch, stage, args, where):
    before = snapshot(done.tmp)
    monkeypatch.setenv(ENOSPC_AT, where)
    line = refused(done, capsys, stage, *args)
    assert line.startswith("error: cannot write ") and line.endswith(": No space left on device")
    assert where.split("*/")[1] in line
    assert_unchanged(before, done.tmp)
    assert temp_files(done.tmp) == []
    monkeypatch.delenv(ENOSPC_AT)
    assert done.run("ensemble") == 0  # what was there is still valid and usable
    assert {p: p.read_bytes() for p in before if p.suffix in (".csv", ".npy")} == {
        p: b for p, b in before.items() if p.suffix in (".csv", ".npy")}


def test_disk_full_after_config_change_keeps_old_model(done, capsys, monkeypatch):
    """New folds may be saved (resume points for the new settings); the old matrices and manifest,
    and so the old submission, survive a failed assembly."""
    lr = done.models / "lr"
    old = {n: (lr / n).read_bytes() for n in ("oof.npy", "test.npy", "test_folds.npy", "manifest.json")}
    sub = (done.tmp / "subs" / "tiny.csv").read_bytes()
    monkeypatch.setenv(ENOSPC_AT, "write:*/lr/oof.npy")
    line = refused(done, capsys, "train", "models.lr.params.C=0.5")
    assert f"cannot write {lr / 'oof.npy'}: No space left on device" in line
    assert {n: (lr / n).read_bytes() for n in old} == old
    monkeypatch.delenv(ENOSPC_AT)
    assert done.run("ensemble") == 0
    assert (done.tmp / "subs" / "tiny.csv").read_bytes() == sub


def test_enospc_midway_through_a_write(done, capsys, monkeypatch):
    """A real partial write: half the bytes land in the temporary file, then the disk is full."""
    before = snapshot(done.tmp)
    real_save = np.save

    def half_then_full(f, arr, allow_pickle=False):
        buf = io.BytesIO()
        real_save(buf, arr, allow_pickle=allow_pickle)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", half_then_full)
    line = refused(done, capsys, "train", "--force")
    assert "lr/fold0/lr_coef.npy: No space left on device" in line  # the fold's first .npy
    monkeypatch.undo()
    assert_unchanged(before, done.tmp)
    assert temp_files(done.tmp) == []


def test_read_only_output_directory(done, capsys, monkeypatch):
    """Tests run as root, where chmod does not stop writes: the refusal of the OS is injected."""
    before = snapshot(done.tmp)

    def read_only(*a, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("pipeline.fileio.tempfile.mkstemp", read_only)
    line = refused(done, capsys, "ensemble")
    assert "cannot write" in line and "ensembles/stack/oof.npy: Read-only file system" in line
    assert_unchanged(before, done.tmp)


def test_os_error_outside_the_writers_is_one_line(exp, capsys, monkeypatch):
    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied", "/somewhere/lemmas")

    monkeypatch.setattr("pipeline.prepared.make_lemmatizer", denied)
    assert refused(exp, capsys, "preprocess") == "error: [Errno 13] Permission denied: '/somewhere/lemmas'"


def test_written_files_get_normal_permissions(done):
    """Atomic writes go through mkstemp (mode 0600); the renamed file gets what open() would give."""
    umask = os.umask(0o022)
    os.umask(umask)
    assert (done.models / "lr" / "oof.npy").stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------- 5. reproducibility


def test_two_runs_identical_matrices_and_submission(template, tmp_path):
    e = make_exp(tmp_path)
    for stage in STAGES:
        assert e.run(stage) == 0
    for rel in ["subs/tiny.csv", "subs/tiny_blend.csv", "subs/tiny_vote.csv"] + [
            str(p.relative_to(template)) for p in (template / "models").rglob("*.npy")]:
        assert (tmp_path / rel).read_bytes() == (template / rel).read_bytes(), rel


def test_versions_in_every_manifest_and_fold(done):
    manifests = list(done.models.glob("*/manifest.json"))
    assert {p.parent.name for p in manifests} == {"lr", "plgbm"}
    for p in manifests:
        m = read_json(p)
        assert {"python", "numpy", "scikit-learn", "lightgbm"} <= set(m["versions"])
        assert len(m["fold_versions"]) == 3 and all(v == m["versions"] for v in m["fold_versions"])
    for p in done.models.glob("*/fold*/fold.json"):
        assert read_json(p)["versions"]["numpy"] == np.__version__


def test_ensemble_warns_on_mixed_versions(done, caplog):
    m = read_json(done.models / "plgbm" / "manifest.json")
    m["versions"]["scikit-learn"] = "0.0.1"
    write_json(done.models / "plgbm" / "manifest.json", m)
    with caplog.at_level(logging.WARNING):
        assert done.run("ensemble") == 0
    assert "matrices were made under different versions of: scikit-learn" in caplog.text


def test_fold_reused_across_versions_is_recorded(done, caplog):
    """A fold resumed from a run under another numpy: reused with a warning, and the manifest keeps
    its versions so that the ensemble still warns."""
    lr = done.models / "lr"
    rec = read_json(lr / "fold0" / "fold.json")
    rec["versions"]["numpy"] = "1.0.0"
    write_json(lr / "fold0" / "fold.json", rec)
    (lr / "manifest.json").unlink()
    with caplog.at_level(logging.INFO):
        assert done.run("train") == 0
    assert f"{lr / 'fold0'} was made under other versions of numpy; reused" in caplog.text
    assert read_json(lr / "manifest.json")["fold_versions"][0]["numpy"] == "1.0.0"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert done.run("ensemble") == 0
    assert "different versions of: numpy" in caplog.text


def test_mixed_versions_unit():
    from pipeline.artifacts import Matrices

    def mat(v, folds=()):
        return Matrices("m", Path("."), None, None, None, {"versions": v, "fold_versions": list(folds)})

    assert mixed_versions([mat({"numpy": "2"}), mat({"numpy": "2"})]) == []
    assert mixed_versions([mat({"numpy": "2", "lightgbm": "4"}), mat({"numpy": "1", "lightgbm": "4"})]) == ["numpy"]
    assert mixed_versions([mat({"numpy": "2"}, [{"numpy": "2"}, {"numpy": "1"}])]) == ["numpy"]


# ----------------------------------------------------------------------------- 6. safe loading


class Payload:
    """Unpickling this runs code: it creates the file named by `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_npy_refused_and_never_run(done, capsys):
    marker = done.tmp / "pwned"
    lr = done.models / "lr"
    with open(lr / "oof.npy", "wb") as f:
        np.save(f, np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match="refused: it holds pickled Python objects"):
        read_npy(lr / "oof.npy")
    set_hash(lr, "oof.npy")
    line = refused(done, capsys, "ensemble")
    assert f"{lr / 'oof.npy'}: refused: it holds pickled Python objects" in line
    assert not marker.exists()


def test_yaml_config_cannot_run_code(exp, capsys):
    marker = exp.tmp / "pwned"
    exp.config.write_text(f"experiment: !!python/object/apply:os.system ['touch {marker}']\n")
    line = refused(exp, capsys, "preprocess")
    assert f"config file {exp.config} is not valid YAML" in line
    assert not marker.exists()


UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_calls(source: str) -> list[str]:
    """Calls in `source` that can run code from a file or a string (see test below for the rules)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords}
            const = {k: v.value for k, v in kw.items() if isinstance(v, ast.Constant)}
            if name in ("eval", "exec") and isinstance(f, ast.Name):
                found.append(f"{name}()")
            elif name == "load" and owner == "torch" and const.get("weights_only") is not True:
                found.append("torch.load without weights_only=True")
            elif name == "load" and owner in ("np", "numpy") and const.get("allow_pickle") is not False:
                found.append("np.load without allow_pickle=False")
            elif name in ("load", "unsafe_load", "full_load", "load_all") and owner == "yaml":
                found.append(f"yaml.{name}")
            elif name == "read_pickle":
                found.append("read_pickle")
            elif const.get("trust_remote_code") is True:
                found.append("trust_remote_code=True")
    return found


def test_unsafe_call_detector_detects():
    bad = ("import pickle\nfrom joblib import load\nimport torch, numpy as np, yaml\n"
           "torch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('x')\nnp.load('x', allow_pickle=True)\n"
           "yaml.load(s)\npd.read_pickle('x')\nAutoModel.from_pretrained('x', trust_remote_code=True)\neval('1')\n")
    assert len(unsafe_calls(bad)) == 10
    assert unsafe_calls("model.eval()\nself.module_.eval()\n") == []  # torch's eval mode is fine
    good = "torch.load('x', weights_only=True)\nnp.load('x', allow_pickle=False)\nyaml.safe_load(s)\n"
    assert unsafe_calls(good) == []


def test_package_never_loads_code_from_files():
    """No pickle/joblib/marshal, torch.load only with weights_only=True, np.load only with
    allow_pickle=False, yaml only through safe_load, no trust_remote_code, no eval/exec."""
    found = {str(p.relative_to(ROOT)): calls for p in sorted((ROOT / "pipeline").rglob("*.py"))
             if (calls := unsafe_calls(p.read_text(encoding="utf-8")))}
    assert found == {}


def test_manifest_from_before_data_hashes_is_reassembled_not_retrained(done, capsys):
    """Old manifests lack the prepared-data hashes: the ensemble says so, and `train` rebuilds the
    manifest from the saved folds without fitting anything again."""
    lr = done.models / "lr"
    m = read_json(lr / "manifest.json")
    del m["prepared_train_sha256"], m["prepared_test_sha256"]
    write_json(lr / "manifest.json", m)
    line = refused(done, capsys, "ensemble")
    assert f"{lr / 'manifest.json'}: prepared_train_sha256 missing" in line
    folds = {p: p.stat().st_ino for p in lr.glob("fold*/*")}
    assert done.run("train") == 0
    assert {p: p.stat().st_ino for p in lr.glob("fold*/*")} == folds
    assert done.run("ensemble") == 0
