"""The input readers: compression, header-less files, separators, encodings, JSON arrays, parquet,
exact JSON numbers, column positions and the test file's conventional id column. Each bad file
must give one PipelineError line naming the file."""
import bz2
import csv
import gzip
import io
import logging
import lzma
import os
import zipfile

import pytest

from pipeline.config import DataConfig
from pipeline.data import read_raw
from pipeline.errors import PipelineError
from pipeline.readers import detect_format, read_table

CSV = 'id,text_a,label\n1,"a, quoted ""x""",pos\n2,b,neg\n'
ROWS = {"id": ["1", "2"], "text_a": ['a, quoted "x"', "b"], "label": ["pos", "neg"]}
# GLUE CoLA's in_domain_train.tsv: source, label, original label (often empty), sentence; no header.
COLA = ("gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
        'gj04\t0\t*\tThe "more" we study verbs, the crazier they get.\n'
        "cj99\t1\t\tDay by day the facts are getting murkier.\n")


def rows(df):
    return {str(c): v for c, v in df.to_dict("list").items()}


def one_line_error(path, **kw) -> str:
    with pytest.raises(PipelineError) as e:
        read_table(path, **kw)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg, msg
    return msg


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- formats and compression


@pytest.mark.parametrize("name, fmt", [("t.csv", "csv"), ("t.tsv.gz", "tsv"), ("t.TXT.bz2", "tsv"),
                                       ("t.jsonl.xz", "jsonl"), ("t.json", "json"), ("t.ndjson", "jsonl"),
                                       ("t.parquet", "parquet"), ("t.csv.zip", "csv"), ("t.dat", "csv")])
def test_detect_format_looks_under_the_compression_suffix(tmp_path, name, fmt):
    assert detect_format(tmp_path / name) == fmt
    assert detect_format(tmp_path / name, "tsv") == "tsv"


@pytest.mark.parametrize("suffix, pack", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress),
                                          (".zip", lambda d: zipped({"inner.csv": d}))])
def test_compressed_csv_reads_like_plain(tmp_path, suffix, pack):
    path = tmp_path / f"train.csv{suffix}"
    path.write_bytes(pack(CSV.encode()))
    assert rows(read_table(path)) == ROWS


def test_compressed_tsv_keeps_bom_and_bare_quote_rules(tmp_path):
    path = tmp_path / "train.tsv.gz"
    path.write_bytes(gzip.compress('\ufeffid\ttext_a\n1\tsaid " hi\n'.encode()))
    assert rows(read_table(path)) == {"id": ["1"], "text_a": ['said " hi']}


def test_zip_member_name_gives_the_format(tmp_path):
    path = tmp_path / "data.zip"
    path.write_bytes(zipped({"folder/train.jsonl": b'{"id": 1.50, "text_a": "x"}\n'}))
    assert rows(read_table(path)) == {"id": ["1.50"], "text_a": ["x"]}


def _truncated_gzip() -> bytes:
    data = gzip.compress(CSV.encode() + b"".join(os.urandom(8).hex().encode() + b",t,pos\n" for _ in range(100)))
    return data[: len(data) // 2]


BAD_ARCHIVES = {
    "truncated gzip": ("t.csv.gz", _truncated_gzip, "not a readable gzip file (truncated"),
    "not gzip": ("t.csv.gz", lambda: b"id,text_a\n1,a\n", "not a readable gzip file (Not a gzipped file"),
    "corrupt bz2": ("t.csv.bz2", lambda: b"BZh9" + b"\x00" * 40, "not a readable bzip2 file"),
    "truncated bz2": ("t.csv.bz2", lambda: bz2.compress(CSV.encode())[:-10], "not a readable bzip2 file"),
    "corrupt xz": ("t.csv.xz", lambda: b"\xfd7zXZ\x00" + b"\x01" * 40, "not a readable xz file"),
    "zip with two members": ("t.zip", lambda: zipped({"a.csv": b"x", "b.csv": b"y"}),
                             "a zip archive must hold exactly one file, this one holds 2: 'a.csv', 'b.csv'"),
    "zip with none": ("t.zip", lambda: zipped({}), "a zip archive must hold exactly one file, this one holds 0"),
    "not a zip": ("t.zip", lambda: b"PK\x03\x04 cut short", "not a readable zip archive"),
    "empty gzip member": ("t.csv.gz", lambda: gzip.compress(b""), "file is empty"),
    "tar": ("t.tar.gz", lambda: gzip.compress(b"x" * 512), "tar archives are not read"),
}


@pytest.mark.parametrize("name", list(BAD_ARCHIVES))
def test_bad_archive_one_line(tmp_path, name):
    file, content, message = BAD_ARCHIVES[name]
    (tmp_path / file).write_bytes(content())
    assert message in one_line_error(tmp_path / file)


def test_compressed_data_without_its_suffix_gets_a_hint(tmp_path):
    (tmp_path / "train.csv").write_bytes(gzip.compress(CSV.encode()))
    assert "not valid UTF-8 at byte 1 (line 1); gzip data: name the file *.gz" in one_line_error(tmp_path / "train.csv")


# ----------------------------------------------------------------------------- header, separator, encoding


def test_headerless_tsv_by_position_cola(tmp_path):
    (tmp_path / "in_domain_train.tsv").write_text(COLA, encoding="utf-8")
    cfg = DataConfig(train="in_domain_train.tsv", header=False, text_a=3, label=1)
    raw = read_raw(cfg, "train", tmp_path)
    assert raw.labels == ["1", "0", "1"]
    assert raw.text_a[1] == 'The "more" we study verbs, the crazier they get.'
    assert raw.ids == ["0", "1", "2"] and raw.id_source == "row numbers"


def test_headerless_file_keeps_its_first_row(tmp_path):
    (tmp_path / "t.csv").write_text("a,1\nb,0\n")
    assert rows(read_table(tmp_path / "t.csv", header=False)) == {"0": ["a", "b"], "1": ["1", "0"]}


def test_header_false_refuses_column_names(tmp_path):
    (tmp_path / "t.tsv").write_text(COLA)
    with pytest.raises(PipelineError, match=r"config: data\.text_a is 'sentence', a column name, but data\.header "
                                            r"is false: name the column by its 0-based position"):
        read_raw(DataConfig(train="t.tsv", header=False, text_a="sentence", label=1), "train", tmp_path)


def test_position_with_a_header_and_out_of_range(tmp_path):
    (tmp_path / "t.csv").write_text(CSV)
    raw = read_raw(DataConfig(train="t.csv", id=0, text_a=1, label="label"), "train", tmp_path)
    assert raw.ids == ["1", "2"] and raw.text_a == ROWS["text_a"] and raw.id_source == "column 0"
    with pytest.raises(PipelineError, match=r"t\.csv: no column at position 7 \(data\.text_b; positions are "
                                            r"0-based and the file has 3 columns: 0\.\.2\)"):
        read_raw(DataConfig(train="t.csv", text_b=7), "train", tmp_path)


@pytest.mark.parametrize("sep", [";", "|", "\\t"])
def test_separator(tmp_path, sep):
    real = "\t" if sep == "\\t" else sep
    (tmp_path / "t.csv").write_text(f'id{real}text_a\n1{real}"a{real} b"\n')
    assert rows(read_table(tmp_path / "t.csv", sep=sep)) == {"id": ["1"], "text_a": [f"a{real} b"]}


def test_separator_must_be_one_character(tmp_path):
    (tmp_path / "t.csv").write_text(CSV)
    assert "data.sep must be one character" in one_line_error(tmp_path / "t.csv", sep="||")


def test_encoding_latin1(tmp_path):
    (tmp_path / "t.csv").write_bytes("id;text_a\n1;café crème\n".encode("latin-1"))
    msg = one_line_error(tmp_path / "t.csv", sep=";")
    assert "not valid UTF-8 at byte 15 (line 2); set data.encoding" in msg
    assert rows(read_table(tmp_path / "t.csv", sep=";", encoding="latin-1"))["text_a"] == ["café crème"]


def test_unknown_encoding(tmp_path):
    (tmp_path / "t.csv").write_text(CSV)
    assert "unknown encoding 'klingon' (data.encoding)" in one_line_error(tmp_path / "t.csv", encoding="klingon")


def test_utf16_refused_unless_asked_for(tmp_path):
    (tmp_path / "t.csv").write_text(CSV, encoding="utf-16")
    assert "UTF-16 text (byte-order mark fffe)" in one_line_error(tmp_path / "t.csv")
    assert rows(read_table(tmp_path / "t.csv", encoding="utf-16")) == ROWS


def test_field_size_limit_is_restored(tmp_path):
    before = csv.field_size_limit()
    (tmp_path / "t.tsv").write_text("id\ttext_a\n1\t" + "w" * 200_000 + "\n", encoding="utf-8")
    assert len(read_table(tmp_path / "t.tsv")["text_a"][0]) == 200_000
    assert csv.field_size_limit() == before


# ----------------------------------------------------------------------------- JSON


def test_json_array_and_json_lines_named_json(tmp_path):
    (tmp_path / "a.json").write_text('\n [{"id": "1", "text_a": "x"},\n  {"id": "2", "text_a": "y", "more": null}]')
    assert rows(read_table(tmp_path / "a.json")) == {"id": ["1", "2"], "text_a": ["x", "y"], "more": [None, None]}
    (tmp_path / "l.json").write_text('{"id": "1", "text_a": "x\u2028y"}\n')  # AFQMC ships JSON lines as .json
    assert rows(read_table(tmp_path / "l.json")) == {"id": ["1"], "text_a": ["x\u2028y"]}


@pytest.mark.parametrize("content, message", [
    ('[{"a": 1}, 3]', "row 2: expected an array of JSON objects, item 2 is a number"),
    ('[["a"]]', "row 1: expected an array of JSON objects, item 1 is an array"),
    ('[{"a": 1},\n {"a": }]', "line 2: invalid JSON"),
    ("[]", "no data rows"),
])
def test_bad_json_array(tmp_path, content, message):
    (tmp_path / "t.json").write_text(content)
    assert message in one_line_error(tmp_path / "t.json")


def test_json_numbers_keep_their_text(tmp_path):
    objs = ['{"id": 1e5, "text_a": "a", "label": 1}', '{"id": 1.50, "text_a": "b", "label": 1.0}',
            '{"id": 1.5, "text_a": "c", "label": true}', '{"id": -0, "text_a": "d", "label": [1.10, {"k": 2}]}']
    (tmp_path / "t.jsonl").write_text("\n".join(objs) + "\n")
    raw = read_raw(DataConfig(train="t.jsonl", id="id"), "train", tmp_path)
    assert raw.ids == ["1e5", "1.50", "1.5", "-0"]  # 1.50 and 1.5 are different ids
    assert raw.labels == ["1", "1.0", "true", '[1.10, {"k": 2}]']


# ----------------------------------------------------------------------------- parquet


def test_parquet_cells_as_text(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array([7, 8, None], pa.int64()), "score": [1.5, 2.0, None],
                      "flag": [True, False, None], "text_a": ["x", None, "z"]})
    pq.write_table(table, tmp_path / "t.parquet")
    assert rows(read_table(tmp_path / "t.parquet")) == {
        "id": ["7", "8", None], "score": ["1.5", "2.0", None], "flag": ["true", "false", None],
        "text_a": ["x", None, "z"]}
    (tmp_path / "t.bin").write_bytes((tmp_path / "t.parquet").read_bytes())
    assert read_table(tmp_path / "t.bin", "parquet").shape == (3, 4)


def test_bad_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "x.parquet").write_text("id,text_a\n1,a\n")
    assert "not a readable parquet file" in one_line_error(tmp_path / "x.parquet")
    good = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text_a": ["a", "b"], "label": [0, 1]}), good)
    (tmp_path / "cut.parquet").write_bytes(good.read_bytes()[:-20])
    assert "not a readable parquet file" in one_line_error(tmp_path / "cut.parquet")
    with pytest.raises(PipelineError, match=r"t\.parquet: missing column 'text_b' \(columns found: text_a, label\)"):
        read_raw(DataConfig(train="t.parquet", text_b="text_b"), "train", tmp_path)


# ----------------------------------------------------------------------------- ids


def test_test_file_conventional_id(tmp_path, caplog):
    (tmp_path / "train.csv").write_text("id,text_a,label\n9,a,0\n9,b,1\n")  # repeated: train keeps row numbers
    (tmp_path / "test.csv").write_text("index,Id,text_a\n5,q1,a\n6,q2,b\n")
    cfg = DataConfig()
    with caplog.at_level(logging.INFO, logger="pipeline.data"):
        test = read_raw(cfg, "test", tmp_path)
        train = read_raw(cfg, "train", tmp_path)
    assert test.ids == ["q1", "q2"] and test.id_source == "column 'Id' (detected)" and test.id_column == "Id"
    assert "ids from column 'Id'" in caplog.text
    assert train.ids == ["0", "1"] and train.id_source == "row numbers"


def test_test_file_without_id_column_warns_row_numbers(tmp_path, caplog):
    (tmp_path / "test.csv").write_text("text_a\na\nb\nc\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        raw = read_raw(DataConfig(), "test", tmp_path)
    assert raw.ids == ["0", "1", "2"] and raw.id_source == "row numbers" and raw.id_column is None
    assert "the submission ids will be row numbers 0..2" in caplog.text


def test_detected_id_column_must_be_unique(tmp_path):
    (tmp_path / "test.csv").write_text("ID,text_a\nx,a\nx,b\n")
    with pytest.raises(PipelineError, match=r"duplicate id 'x' in column 'ID' \(rows 1 and 2\) \(found by its name"):
        read_raw(DataConfig(), "test", tmp_path)


def test_configured_id_wins_and_max_rows(tmp_path):
    (tmp_path / "test.csv").write_text("id,key,text_a\n1,k1,a\n2,k2,b\n")
    raw = read_raw(DataConfig(test_id="key", max_test_rows=1), "test", tmp_path)
    assert raw.ids == ["k1"] and raw.id_source == "column 'key'"
