"""Every physical row of an input file is exactly one table row, in order, or one error line.

The files are built here from random layouts (text rows, blank lines, whitespace-only lines) for
every reader, compression, header setting, one or two text columns, with and without an id column;
the expected rows are known from the way the file was written, never from a reader. A blank or
whitespace-only row is an empty text: data.on_empty_text=empty keeps it as '', =error refuses it
with one line naming the file and row. In JSON lines a blank line is no row at all: it is refused
with one line naming it."""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest
import yaml

from conftest import base_config
from pipeline.config import DataConfig
from pipeline.data import read_raw
from pipeline.errors import PipelineError
from pipeline.readers import read_table

WORDS = ["stock", "market", "rose", "fell", "bank", "vote", "court", "team", 'say "hi"', "a, b", "é", "株"]
PACK = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zip": None}
FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")


@dataclass
class Layout:
    """A file's rows as written: kinds[i] is "text", "blank" or "space"; texts[i] its texts."""
    kinds: list[str]
    texts: list[tuple[str, ...]]
    ids: Optional[list[str]]

    @property
    def empty_rows(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k != "text"]


def random_layout(rng: random.Random, n_text: int, with_id: bool, fmt: str) -> Layout:
    """1..12 rows, at least one of them text; CSV texts may hold quotes, commas and blank lines."""
    n = rng.randint(1, 12)
    kinds = [rng.choice(["text", "text", "blank", "space"]) for _ in range(n)]
    kinds[rng.randrange(n)] = "text"
    texts = [tuple(_text(rng, fmt) for _ in range(n_text)) for _ in range(n)]
    return Layout(kinds, texts, [f"r{i}" for i in range(n)] if with_id else None)


def _text(rng: random.Random, fmt: str) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
    if fmt == "csv" and rng.random() < 0.3:
        words.insert(1, "\n\n")  # a quoted field holding blank lines: still one row
    if fmt == "tsv":
        words = [w.replace(",", "") for w in words]
    return " ".join(words)


def columns(layout: Layout, n_text: int) -> list[str]:
    return (["id"] if layout.ids else []) + ["text_a", "text_b"][:n_text]


def fields(layout: Layout, i: int) -> list[str]:
    return ([layout.ids[i]] if layout.ids else []) + list(layout.texts[i])


def delimited(layout: Layout, n_text: int, fmt: str, header: bool, rng: random.Random) -> bytes:
    """A CSV/TSV file: a blank row is an empty line, a whitespace row a line of spaces."""
    sep, eol = ("\t" if fmt == "tsv" else ","), rng.choice(["\n", "\r\n"])
    lines = [sep.join(columns(layout, n_text))] if header else []
    for i, kind in enumerate(layout.kinds):
        row = sep.join(_quoted(f, fmt) for f in fields(layout, i))
        lines.append({"text": row, "blank": "", "space": " " * rng.randint(1, 3)}[kind])
    text = "".join(line + eol for line in lines)
    if lines[-1] and rng.random() < 0.5:
        text = text[: -len(eol)]  # no final newline: the last line is a row all the same
    return text.encode("utf-8")


def _quoted(field: str, fmt: str) -> str:
    if fmt == "csv" and any(c in field for c in ',"\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


def records(layout: Layout, n_text: int) -> list[dict]:
    """JSON / parquet rows: a blank row has no values at all (None), a whitespace row spaces."""
    out = []
    for i, kind in enumerate(layout.kinds):
        row = dict(zip(columns(layout, n_text), fields(layout, i)))
        if kind != "text":
            row.update({c: (None if kind == "blank" else "  ") for c in ["text_a", "text_b"][:n_text]})
            row.update({"id": None if kind == "blank" else " "} if layout.ids else {})
        out.append(row)
    return out


def jsonl(layout: Layout, n_text: int, rng: random.Random) -> bytes:
    """JSON lines: a blank row is a physical blank line (which the reader must refuse)."""
    lines = ["" if kind == "blank" else json.dumps(row, ensure_ascii=False)
             for kind, row in zip(layout.kinds, records(layout, n_text))]
    return ("\n".join(lines) + ("\n" if rng.random() < 0.5 or not lines[-1] else "")).encode("utf-8")


def parquet(layout: Layout, n_text: int) -> bytes:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records(layout, n_text)), buf)
    return buf.getvalue()


def build(layout: Layout, n_text: int, fmt: str, header: bool, rng: random.Random) -> bytes:
    if fmt in ("csv", "tsv"):
        return delimited(layout, n_text, fmt, header, rng)
    if fmt == "jsonl":
        return jsonl(layout, n_text, rng)
    if fmt == "json":
        return json.dumps(records(layout, n_text), ensure_ascii=False, indent=rng.choice([None, 1])).encode("utf-8")
    return parquet(layout, n_text)


def write(tmp: Path, data: bytes, fmt: str, suffix: str) -> Path:
    name = f"test.{fmt}"
    path = tmp / (name + suffix)
    if suffix == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name, data)
        data = buf.getvalue()
    path.write_bytes(PACK[suffix](data) if suffix != ".zip" else data)
    return path


CASES = [(fmt, suffix, header, n_text, with_id)
         for fmt in FORMATS for suffix in PACK for header in ((True, False) if fmt in ("csv", "tsv") else (True,))
         for n_text in (1, 2) for with_id in (False, True)]


def _case_id(case) -> str:
    fmt, suffix, header, n_text, with_id = case
    return f"{fmt}{suffix}-{'header' if header else 'noheader'}-{n_text}text-{'id' if with_id else 'noid'}"


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(PipelineError) as e:
        fn(*args, **kw)
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    return str(e.value)


def config(path: Path, fmt: str, header: bool, n_text: int, with_id: bool, on_empty: str) -> DataConfig:
    """The column mapping of the file: names with a header, positions without one."""
    keys = columns(Layout([], [], ["x"] if with_id else None), n_text)
    pick = (lambda k: k) if header else keys.index
    return DataConfig(dir=".", train=path.name, test=path.name, header=header, id=pick("id") if with_id else None,
                      text_a=pick("text_a"), text_b=pick("text_b") if n_text == 2 else None,
                      label="label" if header else 9, on_empty_text=on_empty)


@pytest.mark.parametrize("case", CASES, ids=map(_case_id, CASES))
@pytest.mark.parametrize("seed", range(3))
def test_every_row_is_one_table_row(tmp_path, case, seed):
    fmt, suffix, header, n_text, with_id = case
    rng = random.Random(f"{seed}-{_case_id(case)}")
    layout = random_layout(rng, n_text, with_id, fmt)
    path = write(tmp_path, build(layout, n_text, fmt, header, rng), fmt, suffix)
    if fmt == "jsonl" and "blank" in layout.kinds:
        line = layout.kinds.index("blank") + 1
        assert f"{path} line {line}: blank line" in one_line_error(read_table, path, header=header)
        return
    check_table(read_table(path, header=header), layout, n_text, header)
    for on_empty in ("empty", "error"):
        check_raw(path, layout, config(path, fmt, header, n_text, with_id, on_empty))


def check_table(df: pd.DataFrame, layout: Layout, n_text: int, header: bool) -> None:
    """The reader's table: one row per written row, texts in order, blank rows empty."""
    assert len(df) == len(layout.kinds)
    text_cols = [c for c in (["text_a", "text_b"][:n_text] if header else range(len(df.columns)))]
    offset = 1 if layout.ids and not header else 0
    for i, kind in enumerate(layout.kinds):
        got = [df[c][i] if header else df.iloc[i, offset + j] for j, c in enumerate(text_cols[:n_text])]
        if kind == "text":
            assert got == list(layout.texts[i]), (i, got)
        else:
            assert all(v is None or v.strip() == "" for v in got), (i, got)


def check_raw(path: Path, layout: Layout, cfg: DataConfig) -> None:
    """read_raw: blank rows are empty texts (or, with an id column, rows without an id)."""
    empties = layout.empty_rows
    if empties and (layout.ids or cfg.on_empty_text == "error"):
        what = "missing id" if layout.ids else "empty text"
        assert f"{path} row {empties[0] + 1}: {what}" in one_line_error(read_raw, cfg, "test", path.parent)
        return
    raw = read_raw(cfg, "test", path.parent)
    assert raw.ids == (layout.ids or [str(i) for i in range(len(layout.kinds))])
    assert raw.n_empty == len(empties) * (2 if cfg.text_b is not None else 1)
    texts = list(zip(*([raw.text_a] + ([raw.text_b] if raw.text_b is not None else []))))
    assert texts == [t if k == "text" else ("",) * len(t) for k, t in zip(layout.kinds, layout.texts)]


# ----------------------------------------------------------------------------- the reported case, end to end


def single_column_test_file(exp, blank_line: int = 6, rows: int = 30) -> None:
    """The test file as reported: one column (text_a) and no id column; line `blank_line` empty."""
    lines = ["text_a"] + [f"text number {i}" for i in range(rows)]
    lines[blank_line - 1] = ""
    (exp.tmp / "in" / "test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = base_config(exp.tmp)
    cfg["data"].update({"id": None, "text_b": None})
    cfg["models"] = cfg["models"][:1]
    exp.write_config(cfg)


def test_single_column_blank_line_keeps_every_id(exp):
    single_column_test_file(exp)
    assert exp.run("preprocess", "data.on_empty_text=empty") == 0
    prepared = exp.tmp / "work" / "tiny" / "prepared"
    rows = [json.loads(line) for line in (prepared / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert json.loads((prepared / "meta.json").read_text())["n_test"] == 30
    assert [r["id"] for r in rows] == [str(i) for i in range(30)]
    assert rows[4]["raw"] == [""] and rows[5]["raw"] == ["text number 5"] and rows[29]["raw"] == ["text number 29"]


def test_single_column_blank_line_refused_under_on_empty_text_error(exp, capsys):
    single_column_test_file(exp)
    capsys.readouterr()
    assert exp.run("preprocess", "data.on_empty_text=error") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "test.csv row 5: empty text" in err[0], err
    assert not (exp.tmp / "work" / "tiny" / "prepared").exists()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_single_column_tsv_whitespace_line_is_an_empty_text(tmp_path, suffix):
    path = write(tmp_path, b"text_a\none\n   \n\nfour\n", "tsv", suffix)
    raw = read_raw(DataConfig(dir=".", test=path.name, on_empty_text="empty"), "test", tmp_path)
    assert raw.text_a == ["one", "", "", "four"] and raw.ids == ["0", "1", "2", "3"]


def test_blank_lines_before_the_header_are_no_rows(tmp_path):
    (tmp_path / "t.csv").write_text("\n  \r\ntext_a\nx\n\ny\n")
    assert read_table(tmp_path / "t.csv")["text_a"].tolist() == ["x", "", "y"]


def test_header_less_file_starting_with_blank_lines(tmp_path):
    (tmp_path / "t.csv").write_text("\n\nx,1\ny,2\n")
    assert read_table(tmp_path / "t.csv", header=False).values.tolist() == [["", ""], ["", ""], ["x", "1"], ["y", "2"]]


def test_only_the_final_newline_is_no_row(tmp_path):
    (tmp_path / "a.csv").write_text("text_a\nx\n")
    (tmp_path / "b.csv").write_text("text_a\nx\n\n")
    assert len(read_table(tmp_path / "a.csv")) == 1 and len(read_table(tmp_path / "b.csv")) == 2


def test_jsonl_blank_line_named(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text_a": "x"}\n{"text_a": "y"}\n \n{"text_a": "z"}\n')
    assert "t.jsonl line 3: blank line" in one_line_error(read_table, tmp_path / "t.jsonl")
    (tmp_path / "u.jsonl").write_text('{"text_a": "x"}\n\n')
    assert "u.jsonl line 2: blank line" in one_line_error(read_table, tmp_path / "u.jsonl")
