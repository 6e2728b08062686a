"""Readers and the column mapping, on messy files."""
import json

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.data import class_order, read_raw
from pipeline.errors import PipelineError
from pipeline.readers import read_table

MRPC = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t1\t2\tHe said " the witness " lied .\tThe "witness" lied , he said .\n'
        "0\t3\t4\tShares rose 5 % .\tShares fell 3 % .\n")


def mrpc_cfg(**kw):
    return DataConfig(dir=".", train="train.tsv", test="train.tsv", format="tsv", text_a="#1 String",
                      text_b="#2 String", label="Quality", **kw)


def test_mrpc_bom_and_bare_quotes(tmp_path):
    (tmp_path / "train.tsv").write_text(MRPC, encoding="utf-8")
    raw = read_raw(mrpc_cfg(), "train", tmp_path)
    assert raw.labels == ["1", "0"]
    assert raw.text_a[0] == 'He said " the witness " lied .'
    assert raw.text_b[0] == 'The "witness" lied , he said .'
    assert raw.ids == ["0", "1"]


def test_jsonl_string_labels(tmp_path):
    rows = [{"id": 1, "sentence1": "a b", "sentence2": "c", "label": "entailment"},
            {"id": 2, "sentence1": "d", "sentence2": "e f", "label": " not_entailment "}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = DataConfig(train="t.jsonl", id="id", text_a="sentence1", text_b="sentence2")
    raw = read_raw(cfg, "train", tmp_path)
    assert raw.labels == ["entailment", "not_entailment"]  # stripped
    assert raw.ids == ["1", "2"]


def test_class_order_numeric_aware():
    assert class_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_order(["b", "a"]) == ["a", "b"]


def test_missing_column_lists_columns(tmp_path):
    (tmp_path / "train.tsv").write_text(MRPC, encoding="utf-8")
    cfg = mrpc_cfg()
    cfg.text_b = "sentence2"
    with pytest.raises(PipelineError, match=r"missing column 'sentence2' \(columns found: Quality, #1 ID"):
        read_raw(cfg, "train", tmp_path)


def test_duplicate_ids(tmp_path):
    (tmp_path / "train.csv").write_text("id,text_a,label\nx,a,0\ny,b,1\nx,c,0\n")
    with pytest.raises(PipelineError, match=r"duplicate id 'x' in column 'id' \(rows 1 and 3\)"):
        read_raw(DataConfig(id="id"), "train", tmp_path)


def test_empty_text_error_or_counted(tmp_path):
    (tmp_path / "train.csv").write_text('id,text_a,label\nx,a,0\ny,"  ",1\n')
    with pytest.raises(PipelineError, match="row 2: empty text in column 'text_a'"):
        read_raw(DataConfig(id="id"), "train", tmp_path)
    raw = read_raw(DataConfig(id="id", on_empty_text="empty"), "train", tmp_path)
    assert raw.text_a == ["a", ""] and raw.n_empty == 1


def test_not_utf8_and_empty_file(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"id,text_a\n1,caf\xe9\n")
    with pytest.raises(PipelineError, match=r"not valid UTF-8 at byte \d+ \(line 2\)"):
        read_table(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("")
    with pytest.raises(PipelineError, match="file is empty"):
        read_table(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("id,text_a\n")
    with pytest.raises(PipelineError, match="header only"):
        read_table(tmp_path / "c.csv")


def test_quoted_newlines_tabs_and_nuls(tmp_path):
    (tmp_path / "t.csv").write_bytes(b'id,text_a,label\n"a,""b""","line1\nline2\tx\x00",0\n')
    df = read_table(tmp_path / "t.csv")
    assert df["id"].tolist() == ['a,"b"']
    assert df["text_a"].tolist() == ["line1\nline2\tx"]
