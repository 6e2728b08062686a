"""Input-file readers: CSV / TSV / JSON lines / JSON arrays / parquet, plain or compressed.

One entry point, `read_table`, turns a file into a DataFrame whose every cell is str or None. The
work is a chain of small steps, each of which refuses its own kind of bad file with one
PipelineError line naming the file (and the row, line or byte where there is one):

    bytes --(.gz .bz2 .xz .zip)--> decompressed bytes --(name under the suffix)--> format
    parquet: bytes -> arrow table -> text cells
    others:  bytes --(data.encoding)--> text --> CSV/TSV (pandas) or JSON (json) -> text cells

Rows: every record of the file becomes exactly one row, in order, or the read is refused; `_finish`
checks the table against the count of records each format reports on its own (for CSV/TSV an
independent pass of the csv module). A blank line of a CSV/TSV is a row of empty fields (so
data.on_empty_text decides about its text, and a blank line of a one-column file is an empty
text); only the newline that ends the last line makes no row, and blank lines before a header row
belong to no row. A line of JSON lines is one object: a blank line there is refused, naming it.
"""
from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import io
import json
import logging
import lzma
import math
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd

from .errors import PipelineError
from .io import read_bytes

log = logging.getLogger("pipeline.readers")

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip")
# Python's csv module refuses fields over 128 KiB by default; a long abstract or a whole document
# in one TSV cell is legitimate input (the C parser used for CSV has no such limit).
FIELD_SIZE_LIMIT = 1 << 30
# Leading bytes of files that are not text, for a hint when one is read as text.
MAGIC = ((b"\x1f\x8b", "gzip data: name the file *.gz"), (b"BZh", "bzip2 data: name the file *.bz2"),
         (b"\xfd7zXZ\x00", "xz data: name the file *.xz"),
         (b"PK\x03\x04", "a zip archive (an Excel .xlsx file is one too): name it *.zip, or save the sheet as CSV"),
         (b"PAR1", "a parquet file: name it *.parquet or set data.format=parquet"))


def read_table(path: Path, fmt: str = "auto", *, header: bool = True, sep: Optional[str] = None,
               encoding: str = "utf-8") -> pd.DataFrame:
    """Every cell as str (None where missing), column names stripped; no type guessing; one row
    per record of the file, in order (see the module docstring).

    header=False: CSV/TSV have no header row and their columns are the ints 0..n-1 (JSON keys and
    parquet names stay names). Refused with one line naming the file: a missing, empty or
    undecodable file (UTF-16 named as such), a broken or ambiguous archive, header only,
    repeated column names, a row with more fields than the header, unparseable quoting or JSON, a
    blank line of JSON lines, a file pyarrow cannot read as parquet. A short row's missing trailing fields are None (so the
    column mapping reports them). NUL characters are removed with a warning: they are never
    meaningful text and break the C parser. Fields may be any length.
    """
    path = Path(path)
    data = _read_bytes(path)
    name, data = _decompress(data, path)
    fmt = detect_format(Path(name), fmt)
    if fmt == "parquet":
        df, records = _read_parquet(data, path)
    else:
        compressed = path.suffix.lower() in COMPRESSIONS
        text = _drop_nuls(_decode(data, path, encoding, compressed), path)
        df, records = _parse_text(text, fmt, path, header, _separator(sep, fmt, path))
    return _finish(df, path, header and fmt in ("csv", "tsv"), records)


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The format named by `fmt`, or with "auto" by the suffix under any compression suffix.

    `.json` stays "json": a JSON array or JSON lines, told apart by the first character."""
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    suffix = Path(name).suffix
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".json", ".parquet"):
        return suffix[1:]
    return "csv"


# ----------------------------------------------------------------------------- bytes


def _read_bytes(path: Path) -> bytes:
    data = read_bytes(path)
    if not data:
        raise PipelineError(f"{path}: file is empty")
    return data


def _decompress(data: bytes, path: Path) -> tuple[str, bytes]:
    """(name whose suffix tells the format, decompressed bytes), chosen by the file's suffix.

    Plain files come back as they are. For a zip archive the name is its one member's."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return _unzip(data, path)
    if suffix not in COMPRESSIONS:
        return path.name, data
    if path.name.lower().removesuffix(suffix).endswith(".tar"):
        raise PipelineError(f"{path}: tar archives are not read; extract the data file (or compress it alone)")
    what = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}[suffix]
    module = {".gz": gzip, ".bz2": bz2, ".xz": lzma}[suffix]
    try:
        out = module.decompress(data)
    except (EOFError, ValueError, OSError, zlib.error, lzma.LZMAError) as e:
        raise PipelineError(f"{path}: not a readable {what} file ({_compression_problem(e)})") from None
    if not out:
        raise PipelineError(f"{path}: file is empty (after decompression)")
    return path.name[: -len(suffix)], out


def _compression_problem(e: Exception) -> str:
    # The decompressors' own words for a cut-off file are about "end-of-stream markers".
    if "ended before the end-of-stream marker" in str(e):
        return "truncated: the compressed data ends early"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _unzip(data: bytes, path: Path) -> tuple[str, bytes]:
    """The one file inside a zip archive: with two there is no telling which one is meant."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1:
                names = ", ".join(repr(m.filename) for m in members[:5]) + (", ..." if len(members) > 5 else "")
                raise PipelineError(f"{path}: a zip archive must hold exactly one file, this one holds "
                                    f"{len(members)}{': ' + names if members else ''}")
            out = archive.read(members[0])
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise PipelineError(f"{path}: not a readable zip archive ({_compression_problem(e)})") from None
    except (RuntimeError, NotImplementedError) as e:  # encrypted, or a compression method zipfile lacks
        raise PipelineError(f"{path}: cannot read its member ({e})") from None
    if not out:
        raise PipelineError(f"{path}: file is empty (its member {members[0].filename!r})")
    return Path(members[0].filename).name, out


# ----------------------------------------------------------------------------- text


def _decode(data: bytes, path: Path, encoding: str, compressed: bool) -> str:
    """Bytes -> str. UTF-8 drops a BOM (GLUE files start with one) and refuses UTF-16 by its BOM."""
    try:
        utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    except LookupError:
        raise PipelineError(f"{path}: unknown encoding {encoding!r} (data.encoding)") from None
    if utf8 and data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PipelineError(f"{path}: UTF-16 text (byte-order mark {data[:2].hex()}); save it as UTF-8 "
                            "or set data.encoding=utf-16")
    try:
        text = data.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as e:
        raise PipelineError(_decode_problem(data, e, path, "UTF-8" if utf8 else encoding, compressed)) from None
    except LookupError:  # a codec that is not a text encoding, such as base64
        raise PipelineError(f"{path}: {encoding!r} is not a text encoding (data.encoding)") from None
    if not text.strip():
        raise PipelineError(f"{path}: file is empty")
    return text


def _decode_problem(data: bytes, e: UnicodeDecodeError, path: Path, name: str, compressed: bool) -> str:
    line = data[: e.start].count(b"\n") + 1
    where = " of the decompressed data" if compressed else ""
    hint = next((h for magic, h in MAGIC if data.startswith(magic)), None)
    if hint is None and name == "UTF-8":
        hint = "set data.encoding if the file uses another one, such as latin-1"
    return f"{path}: not valid {name} at byte {e.start}{where} (line {line})" + (f"; {hint}" if hint else "")


def _drop_nuls(text: str, path: Path) -> str:
    if "\x00" in text:
        log.warning("%s: removed %d NUL characters", path, text.count("\x00"))
        text = text.replace("\x00", "")
    return text


def _separator(sep: Optional[str], fmt: str, path: Path) -> str:
    """The field separator: data.sep, else by format (a tab for TSV, a comma otherwise)."""
    if sep is None:
        return "\t" if fmt == "tsv" else ","
    sep = "\t" if sep == "\\t" else sep  # YAML 'single quotes' keep \t as two characters
    if len(sep) != 1 or sep in "\r\n\"":
        raise PipelineError(f"{path}: data.sep must be one character other than a quote or newline, got {sep!r}")
    return sep


def _parse_text(text: str, fmt: str, path: Path, header: bool, sep: str) -> tuple[pd.DataFrame, int]:
    """(table, the number of rows the file holds by the format's own count)."""
    if fmt in ("json", "jsonl"):
        # `[` can only start a JSON array, never a line of JSON lines that we would accept.
        return _read_json_array(text, path) if text.lstrip().startswith("[") else _read_jsonl(text, path)
    try:
        return _read_delimited(text, fmt, path, header, sep)
    except (pd.errors.ParserError, ValueError, csv.Error) as e:
        raise PipelineError(f"{path}: cannot parse as {fmt}: {str(e).strip().splitlines()[-1]}") from None


# ----------------------------------------------------------------------------- CSV / TSV


def _quoting(fmt: str) -> int:
    # TSV files such as GLUE's hold bare double quotes inside fields: quoting must be off.
    return csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL


@contextlib.contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    """Raise the csv module's field limit for one read only: it is process-wide state."""
    old = csv.field_size_limit(max(csv.field_size_limit(), limit))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _records(text: str, fmt: str, sep: str) -> Iterator[list[str]]:
    """The csv module's records of `text`: one per row of the file, [] for a blank line."""
    # newline="": a lone \r ends a record as it does for pandas, and \r\n inside quotes stays text.
    return csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=_quoting(fmt))


def _header(text: str, fmt: str, sep: str) -> list[str]:
    """The first record's fields as written (pandas would rename a repeated `x` to `x.1`)."""
    with _field_size_limit(FIELD_SIZE_LIMIT):
        return [c.strip() for c in next(_records(text, fmt, sep), [])]


def _count_records(text: str, fmt: str, sep: str) -> tuple[int, int]:
    """(records of `text` by the csv module, fields of the first non-blank one): the count the
    table must match whatever pandas does with blank lines, and the width of a header-less file."""
    n, width = 0, 0
    with _field_size_limit(FIELD_SIZE_LIMIT):
        for record in _records(text, fmt, sep):
            n += 1
            if not width and any(f.strip() for f in record):
                width = len(record)
    return n, width


# Blank and whitespace-only lines before the header row: they precede every row, so none is a row.
_LEADING_BLANK_LINES = re.compile(r"(?:[ \t]*(?:\r\n|\r|\n))*")


def _read_delimited(text: str, fmt: str, path: Path, header: bool, sep: str) -> tuple[pd.DataFrame, int]:
    """(table, records): every record a row, a blank line a row of empty fields (skip_blank_lines
    off; with it on, a blank line of a one-column file vanished and shifted every later id)."""
    if header:
        text = text[_LEADING_BLANK_LINES.match(text).end():]
        _refuse_repeated(_header(text, fmt, sep), path, "in the header")
    records, width = _count_records(text, fmt, sep)
    # index_col=False: a row with one field too many must not silently turn column 1 into an index
    # and shift every column left; pandas warns instead, and the warning is made an error. Without
    # a header the names come from the first non-blank record (pandas would refuse a file that
    # starts with a blank line), and pandas refuses a longer row itself.
    try:
        with _field_size_limit(FIELD_SIZE_LIMIT), _warnings_as_errors(pd.errors.ParserWarning):
            df = pd.read_csv(io.StringIO(text), sep=sep, quoting=_quoting(fmt), header=0 if header else None,
                             names=None if header else list(range(max(width, 1))), dtype=str,
                             keep_default_na=False, index_col=False, skip_blank_lines=False,
                             engine="python" if fmt == "tsv" else "c")
    except pd.errors.ParserWarning:
        raise PipelineError(f"{path}: cannot parse as {fmt}: a row has more fields than the header "
                            f"({len(_header(text, fmt, sep))} columns)") from None
    return df, records - (1 if header else 0)


@contextlib.contextmanager
def _warnings_as_errors(category: type[Warning]) -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", category)
        yield


def _refuse_repeated(names: list, path: Path, where: str) -> None:
    repeated = sorted({str(c) for c in names if names.count(c) > 1})
    if repeated:
        raise PipelineError(f"{path}: column names repeated {where}: {', '.join(map(repr, repeated))}")


# ----------------------------------------------------------------------------- JSON


class _Number(str):
    """A JSON number (or NaN/Infinity) kept as the text written in the file: 1e5, 1.50, -0."""


def _loads(text: str) -> Any:
    return json.loads(text, parse_int=_Number, parse_float=_Number, parse_constant=_Number)


def _read_jsonl(text: str, path: Path) -> tuple[pd.DataFrame, int]:
    """(table, lines): every line one JSON object, so one row; a blank line is refused by its
    number, since it cannot be a row and skipping it would hide a line that went missing."""
    # split("\n"), not splitlines(): U+2028 and friends are legal inside a JSON string.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no row
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise PipelineError(f"{path} line {i}: blank line (in JSON lines each line is one row; remove it, "
                                "or write {} for a row with no values)")
        try:
            obj = _loads(line)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{path} line {i}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise PipelineError(f"{path} line {i}: expected a JSON object, got {_json_kind(obj)}")
        rows.append(_json_row(obj))
    return pd.DataFrame(rows, dtype=object), len(lines)


def _read_json_array(text: str, path: Path) -> tuple[pd.DataFrame, int]:
    """(table, items) of a JSON array of objects: one row per item."""
    try:
        items = _loads(text)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise PipelineError(f"{path} row {i + 1}: expected an array of JSON objects, item {i + 1} "
                                f"is {_json_kind(obj)}")
    return pd.DataFrame([_json_row(obj) for obj in items], dtype=object), len(items)


def _json_kind(v: Any) -> str:
    if isinstance(v, _Number):
        return "a number"
    return {str: "a string", list: "an array", bool: "a boolean", type(None): "null"}.get(type(v), type(v).__name__)


def _json_row(obj: dict) -> dict:
    return {k: (None if v is None else _json_cell(v)) for k, v in obj.items()}


def _json_cell(v: Any) -> str:
    if isinstance(v, str) and not isinstance(v, _Number):
        return v.replace("\x00", "")  # an escaped \u0000 survives json.loads; drop it like a raw NUL
    return _json_text(v)


def _json_text(v: Any) -> str:
    """JSON text of a parsed value, numbers exactly as written (json.dumps would rewrite 1.50)."""
    if isinstance(v, _Number):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(_json_text, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_json_text(x)}" for k, x in v.items()) + "}"
    return json.dumps(v, ensure_ascii=False)  # str, bool, null


# ----------------------------------------------------------------------------- parquet


def _read_parquet(data: bytes, path: Path) -> tuple[pd.DataFrame, int]:
    """(table, the file's row count). Columns converted to text the way JSON values are (ints without .0, true/false)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PipelineError(f"{path}: reading parquet needs pyarrow (pip install -r requirements.txt)") from None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PipelineError(f"{path}: not a readable parquet file ({str(e).strip().splitlines()[0]})") from None
    _refuse_repeated([n.strip() for n in table.column_names], path, "in the parquet schema")
    columns = {name: _arrow_texts(table.column(name).to_pylist(), path, name) for name in table.column_names}
    return (pd.DataFrame(columns, dtype=object) if columns else pd.DataFrame()), table.num_rows


def _arrow_texts(values: list, path: Path, column: str) -> list[Optional[str]]:
    out = [v if isinstance(v, str) or v is None else _arrow_cell(v, path, column, i) for i, v in enumerate(values)]
    n_nul = sum(v.count("\x00") for v in out if v is not None and "\x00" in v)
    if n_nul:
        log.warning("%s: removed %d NUL characters from column %r", path, n_nul, column)
        out = [v.replace("\x00", "") if v is not None else None for v in out]
    return out


def _arrow_cell(v: Any, path: Path, column: str, row: int) -> Optional[str]:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        # pandas writes its missing values as NaN floats; they are missing, not the text "nan".
        return None if math.isnan(v) else repr(v)
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise PipelineError(f"{path} row {row + 1}: binary value in column {column!r} is not UTF-8 text") from None
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return str(v)  # int, Decimal (exact digits), dates and times


# ----------------------------------------------------------------------------- common


def _finish(df: pd.DataFrame, path: Path, has_header: bool, records: int) -> pd.DataFrame:
    """The parsed table, checked: one row per record of the file (`records`, counted by the
    format on its own), names unique once stripped, at least one row; missing cells None."""
    if len(df) != records:  # the one check that no reader drops, splits or merges a row unseen
        raise PipelineError(f"{path}: read {len(df)} rows but the file holds {records} records; refusing a "
                            "table that would misalign ids and rows")
    # Positions (header=False) stay ints; names are stripped, which may make two of them equal.
    df.columns = [c.strip() if isinstance(c, str) else c for c in df.columns]
    _refuse_repeated(list(df.columns), path, "(after stripping spaces)")
    if len(df) == 0:
        raise PipelineError(f"{path}: no data rows{' (header only)' if has_header else ''}")
    # Short rows and absent JSON keys come back as NaN; missing is None, never the string "nan".
    return df.astype(object).where(df.notna(), None)
