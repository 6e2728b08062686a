"""Inputs and settings have bounds: past one, a single `error:` line naming the file (row, line or
key) and the bound, at read or config time, in bounded time and memory; never a traceback from
training, a float32 overflow or a huge allocation. Byte bounds are overridden by their environment
variables here, so the tests stay small."""
from __future__ import annotations

import gzip
import io
import json
import lzma
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from conftest import base_config, tiny_pairs
from pipeline import metrics as M
from pipeline import readers
from pipeline.config import AugmentConfig, DataConfig
from pipeline.data import class_order, read_raw
from pipeline.errors import PipelineError
from pipeline.readers import read_table
from pipeline.tasks import MAX_TARGET, TASKS


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(PipelineError) as e:
        fn(*args, **kw)
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    return str(e.value)


def refused(exp, capsys, *args: str) -> str:
    """Run preprocess, which must refuse; its one `error:` line, with nothing written."""
    capsys.readouterr()
    assert exp.run("preprocess", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (exp.tmp / "work" / "tiny" / "prepared").exists()
    return err[0]


def train_labels(exp, labels: list[str], **cfg) -> None:
    """The experiment's train file with these labels (one per row), and config keys on top."""
    df = tiny_pairs(len(labels), 0)
    df["label"] = labels
    df.to_csv(exp.tmp / "in" / "train.csv", index=False)
    config = base_config(exp.tmp, **cfg)
    config["models"] = config["models"][:1]
    exp.write_config(config)


# ----------------------------------------------------------------------------- regression targets


def test_huge_regression_target_refused_at_preprocess(exp, capsys):
    labels = [str(i % 7) for i in range(60)]
    labels[41] = "1e307"  # finite as float64, overflows float32 in training
    train_labels(exp, labels, task="regression", metric="rmse")
    line = refused(exp, capsys)
    assert "train.csv row 42" in line and "'1e307'" in line and f"{MAX_TARGET:g}" in line


@pytest.mark.parametrize("value", ["1e31", "-2e30", "1e400", "-1e999"])
def test_target_beyond_the_bound(value):
    msg = one_line_error(TASKS["regression"].encode, ["1", value], ["y"], "t.csv", "y")
    assert "t.csv row 2" in msg and "bound" in msg


def test_target_at_the_bound_accepted():
    y = TASKS["regression"].encode(["1e30", "-1e30", "0"], ["y"], "t.csv", "y")
    assert y.tolist() == [1e30, -1e30, 0.0]
    assert TASKS["regression"].invalid_rows(np.array([1.0, 2e30, np.nan]), 1).tolist() == [1, 2]


# ----------------------------------------------------------------------------- qwk


def test_qwk_rating_range_refused_before_training(exp, capsys):
    train_labels(exp, [str(i * 11_111) for i in range(91)], task="regression", metric="qwk")  # 0..999,990
    line = refused(exp, capsys)
    assert "train.csv" in line and f"at most {M.QWK_MAX_RATINGS} ratings" in line and "0..999990" in line


def test_qwk_range_at_the_bound_passes():
    y = np.array([0.0, M.QWK_MAX_RATINGS - 1.0, 3.0])
    TASKS["regression"].check_labels(y, "qwk", "t.csv")
    with pytest.raises(PipelineError, match=f"at most {M.QWK_MAX_RATINGS} ratings"):
        TASKS["regression"].check_labels(np.r_[y, M.QWK_MAX_RATINGS], "qwk", "t.csv")


def confusion_qwk(a: np.ndarray, b: np.ndarray) -> float:
    """QWK from the full confusion matrix over every rating from the lowest to the highest."""
    lo, k = min(a.min(), b.min()), int(max(a.max(), b.max()) - min(a.min(), b.min()) + 1)
    conf = np.zeros((k, k))
    np.add.at(conf, (a - lo, b - lo), 1)
    expected = np.outer(conf.sum(1), conf.sum(0)) / conf.sum()
    w = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    return 1.0 if (w * expected).sum() == 0 else 1 - (w * conf).sum() / (w * expected).sum()


@pytest.mark.parametrize("seed", range(5))
def test_qwk_equals_the_confusion_matrix_formula(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(-3, 9, 50), rng.integers(0, 12, 50)  # ratings with gaps and unequal ranges
    assert np.isclose(M.qwk(a, b), confusion_qwk(a, b))
    assert M.qwk(a, a) == 1.0 and M.qwk(np.full(4, 2), np.full(4, 2)) == 1.0


def test_qwk_of_a_huge_rating_range_allocates_nothing_big():
    a = np.array([0, 1_000_000, 500_000, 3] * 1000)
    tracemalloc.start()
    value = M.qwk(a, a[::-1].copy())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.isfinite(value) and peak < 10 * a.nbytes  # the confusion matrix would be 8 TB
    assert "qwk" not in M.regression_scores(a.astype(float), a[:, None].astype(float))


# ----------------------------------------------------------------------------- JSON nesting


@pytest.mark.parametrize("name, content, line", [
    ("deep.jsonl", '{"text_a": "x"}\n{"text_a": ' + "[" * 200_000 + "]" * 200_000 + "}\n", 2),
    ("deep.json", "[" * 200_000 + "]" * 200_000, 1),
    ("deep2.json", '[{"text_a": "x"},\n {"text_a": ' + "[" * 200_000 + "]" * 200_000 + "}]", 2),
    ("just.jsonl", '{"a": ' + "[" * readers.MAX_JSON_DEPTH + "]" * readers.MAX_JSON_DEPTH + "}\n", 1),
])
def test_json_nesting_bound(tmp_path, name, content, line):
    (tmp_path / name).write_text(content)
    msg = one_line_error(read_table, tmp_path / name)
    assert f"{name} line {line}: JSON nested deeper than the bound of {readers.MAX_JSON_DEPTH} levels" in msg


def test_json_nesting_at_the_bound_accepted(tmp_path):
    depth = readers.MAX_JSON_DEPTH - 1  # the row's object is level 1
    (tmp_path / "t.jsonl").write_text('{"a": ' + "[" * depth + "]" * depth + "}\n")
    assert read_table(tmp_path / "t.jsonl")["a"][0] == "[" * depth + "]" * depth


# ----------------------------------------------------------------------------- input and field size


def xz_of(text: bytes) -> bytes:
    return lzma.compress(text, preset=0)


def test_decompression_stops_at_the_input_bound(tmp_path, monkeypatch):
    """A small archive of a big file: refused as soon as the stream passes the bound."""
    monkeypatch.setenv("PIPELINE_MAX_INPUT_BYTES", "100000")
    monkeypatch.setattr(readers, "CHUNK_BYTES", 4096)
    big = b"text_a\n" + b"some words, more words\n" * 400_000  # 9 MB, compresses to a few KB
    (tmp_path / "t.csv.xz").write_bytes(xz_of(big))
    tracemalloc.start()
    msg = one_line_error(read_table, tmp_path / "t.csv.xz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "t.csv.xz" in msg and "100000 bytes" in msg and "PIPELINE_MAX_INPUT_BYTES" in msg
    assert peak < 2_000_000  # never the whole 9 MB


@pytest.mark.parametrize("suffix, pack", [(".gz", gzip.compress), (".zip", None), ("", None)])
def test_input_bound_applies_to_every_container(tmp_path, monkeypatch, suffix, pack):
    monkeypatch.setenv("PIPELINE_MAX_INPUT_BYTES", "1000")
    data = b"text_a\n" + b"word\n" * 400
    if suffix == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("t.csv", data)
        data = buf.getvalue()
    (tmp_path / f"t.csv{suffix}").write_bytes(pack(data) if pack else data)
    assert "PIPELINE_MAX_INPUT_BYTES" in one_line_error(read_table, tmp_path / f"t.csv{suffix}")


def test_one_giant_field_in_a_tiny_xz_stops_early(tmp_path, monkeypatch):
    """The reported file, scaled down: a field of one repeated letter, 1000 times the field bound."""
    monkeypatch.setenv("PIPELINE_MAX_FIELD_BYTES", "10000")
    (tmp_path / "train.csv.xz").write_bytes(xz_of(b"id,text_a,label\n1,ok,0\n2," + b"x" * 10_000_000 + b",1\n"))
    start = time.monotonic()
    msg = one_line_error(read_table, tmp_path / "train.csv.xz")
    assert "train.csv.xz line 3: a field longer than the bound of 10000 bytes" in msg
    assert time.monotonic() - start < 5


FIELD_FILES = {
    "csv": lambda f: f"id,text_a\n1,ok\n2,\"{f}\"\n".encode(),
    "tsv": lambda f: f"id\ttext_a\n1\tok\n2\t{f}\n".encode(),
    "jsonl": lambda f: (json.dumps({"id": 1, "text_a": "ok"}) + "\n" + json.dumps({"id": 2, "text_a": f}) + "\n").encode(),
    "json": lambda f: json.dumps([{"id": 1, "text_a": "ok"}, {"id": 2, "text_a": f}]).encode(),
}


@pytest.mark.parametrize("fmt", [*FIELD_FILES, "parquet"])
def test_field_bound_applies_to_every_format(tmp_path, monkeypatch, fmt):
    monkeypatch.setenv("PIPELINE_MAX_FIELD_BYTES", "1000")
    field = "a, b " * 300  # 1500 bytes, with separators: only the table check can see it
    path = tmp_path / f"t.{fmt}"
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": ["1", "2"], "text_a": ["ok", field]}), path)
    else:
        path.write_bytes(FIELD_FILES[fmt](field))
    msg = one_line_error(read_table, path)
    assert f"t.{fmt} row 2: column 'text_a' holds 1500 bytes, more than the bound of 1000 bytes" in msg


def test_field_bound_counts_utf8_bytes_and_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_MAX_FIELD_BYTES", "1000")
    (tmp_path / "t.csv").write_text("text_a\n" + "株" * 300 + "\n" + "株" * 400 + "\n", encoding="utf-8")
    msg = one_line_error(read_table, tmp_path / "t.csv")
    assert "row 2: column 'text_a' holds 1200 bytes" in msg and "PIPELINE_MAX_FIELD_BYTES" in msg


def test_parquet_unpacked_size_bound(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text_a": ["same words again"] * 20_000}), tmp_path / "t.parquet")  # a dictionary
    pq.write_table(pa.table({"n": [7] * 20_000}), tmp_path / "n.parquet")
    assert (tmp_path / "t.parquet").stat().st_size < 5000 and (tmp_path / "n.parquet").stat().st_size < 5000
    monkeypatch.setenv("PIPELINE_MAX_INPUT_BYTES", "100000")
    for name in ("t.parquet", "n.parquet"):
        assert "once its pages are unpacked" in one_line_error(read_table, tmp_path / name)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e6", "٣"])
def test_bound_variables_must_be_whole_numbers(tmp_path, monkeypatch, value):
    (tmp_path / "t.csv").write_text("text_a\nx\n")
    monkeypatch.setenv("PIPELINE_MAX_FIELD_BYTES", value)
    assert "PIPELINE_MAX_FIELD_BYTES" in one_line_error(read_table, tmp_path / "t.csv")


def test_default_bounds_read_big_legitimate_fields(tmp_path):
    (tmp_path / "t.tsv").write_text("id\ttext_a\n1\t" + "w" * 500_000 + "\n", encoding="utf-8")
    assert len(read_table(tmp_path / "t.tsv")["text_a"][0]) == 500_000


# ----------------------------------------------------------------------------- augmentation copies


def test_augment_copies_bound():
    assert AugmentConfig(copies=20, random_swap=0.1).copies == 20
    with pytest.raises(PipelineError, match="copies=100000 must be between 0 and 20"):
        AugmentConfig(copies=100_000, random_swap=0.1)


def test_augment_copies_bound_at_config_time(exp, capsys):
    line = refused(exp, capsys, "models.lr.augment.copies=100000", "models.lr.augment.random_swap=0.1")
    assert "augment.copies=100000 must be between 0 and 20" in line


# ----------------------------------------------------------------------------- plain numbers


@pytest.mark.parametrize("value", ["1_000", "٣", "１", " 1", "0x10", "nan", "inf", "-inf", "1e", "--1", "1,5", "½"])
def test_regression_label_must_be_a_plain_ascii_number(value):
    msg = one_line_error(TASKS["regression"].encode, ["1", value], ["y"], "t.csv", "y")
    assert "t.csv row 2" in msg and repr(value) in msg


def test_plain_numbers_accepted():
    values = ["-1.5e3", ".5", "1.", "+2", "3E-2", "0"]
    assert TASKS["regression"].encode(values, ["y"], "t.csv", "y").tolist() == [-1500.0, 0.5, 1.0, 2.0, 0.03, 0.0]


def test_non_ascii_digit_labels_refused_through_the_file(exp, capsys):
    train_labels(exp, [str(i % 5) for i in range(59)] + ["٣"], task="regression", metric="rmse")
    line = refused(exp, capsys)
    assert "train.csv row 60: label '٣'" in line


def test_class_order_by_plain_integers_only():
    assert class_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_order(["٣", "3", "10"]) == sorted(["٣", "3", "10"])   # not numbers: by name
    assert class_order(["01", "1", "2"]) == ["01", "1", "2"]             # a tie sorts by name, every run


# ----------------------------------------------------------------------------- JSON keys, surrogates, NULs


@pytest.mark.parametrize("name, content, line", [
    ("t.jsonl", '{"text_a": "x", "label": 1}\n{"text_a": "y", "label": 0, "label": 1}\n', 2),
    ("t.json", '[{"text_a": "x", "label": 1},\n {"text_a": "y",\n  "label": 0, "label": 1}]', 2),
    ("n.jsonl", '{"text_a": "x", "meta": {"k": 1, "k": 2}}\n', 1),
])
def test_repeated_json_key_refused(tmp_path, name, content, line):
    (tmp_path / name).write_text(content)
    msg = one_line_error(read_table, tmp_path / name)
    assert f"{name} line {line}: key " in msg and "appears twice" in msg


def test_unpaired_surrogate_refused_like_the_server(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text_a": "ok"}\n{"text_a": "bad \\ud800 x"}\n')
    assert "t.jsonl row 2: column 'text_a' holds an unpaired surrogate" in one_line_error(read_table, tmp_path / "t.jsonl")
    (tmp_path / "p.jsonl").write_text('{"text_a": "pair \\ud83d\\ude00 ok"}\n')
    assert read_table(tmp_path / "p.jsonl")["text_a"][0] == "pair \U0001F600 ok"


def test_every_reader_cleans_text_with_clean_text(tmp_path, monkeypatch):
    """One rule for NULs (readers.clean_text), which the server calls too."""
    assert readers.clean_text("a\x00b") == "ab" and readers.clean_text("\x00") == ""
    seen = []
    monkeypatch.setattr(readers, "clean_text", lambda t: seen.append(t) or t.replace("\x00", ""))
    (tmp_path / "t.csv").write_bytes(b"text_a\na\x00b\n")
    (tmp_path / "t.jsonl").write_text('{"text_a": "c\\u0000d"}\n')
    assert read_table(tmp_path / "t.csv")["text_a"][0] == "ab"
    assert read_table(tmp_path / "t.jsonl")["text_a"][0] == "cd"
    assert "c\x00d" in seen and any("a\x00b" in t for t in seen)
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text_a": ["e\x00f"]}), tmp_path / "t.parquet")
    assert read_table(tmp_path / "t.parquet")["text_a"][0] == "ef" and "e\x00f" in seen


def test_read_raw_of_a_nul_only_text_is_empty(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text_a": "x"}\n{"text_a": "\\u0000"}\n')
    with pytest.raises(PipelineError, match=r"t\.jsonl row 2: empty text"):
        read_raw(DataConfig(dir=".", test="t.jsonl"), "test", tmp_path)
