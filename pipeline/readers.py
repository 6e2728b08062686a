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

Bounds, each refused with one line naming the file (and row or line) and the bound:

    MAX_INPUT_BYTES  2 GiB  a file, plain or after decompression   env PIPELINE_MAX_INPUT_BYTES
    MAX_FIELD_BYTES  1 MiB  one cell (or column name) in UTF-8      env PIPELINE_MAX_FIELD_BYTES
    MAX_JSON_DEPTH   64     nesting of one JSON row (its object is level 1)

The byte bounds can be raised by their environment variable (a whole number of bytes) for a
competition that needs more; a real one's essays are far below 1 MiB. Compressed input is
decompressed as a stream, so a small archive of a huge file stops at the bound instead of filling
memory, and a run of bytes that can only lie inside one over-long field stops the read early.
JSON objects that repeat a key are refused (json would keep the last value silently).
`clean_text` is the one rule for text from outside (files here, and the server): no NULs.
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
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd

from .errors import PipelineError
from .fileio import read_bytes

log = logging.getLogger("pipeline.readers")

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip")
MAX_INPUT_BYTES = 2 << 30    # a file's bytes after decompression; env PIPELINE_MAX_INPUT_BYTES
MAX_FIELD_BYTES = 1 << 20    # one cell's UTF-8 bytes; env PIPELINE_MAX_FIELD_BYTES
MAX_JSON_DEPTH = 64          # nesting levels of one JSON row (the row's own object is level 1)
# The most bytes one character takes in a file (a JSON \uXXXX escape); a run this many times
# MAX_FIELD_BYTES long without a newline, quote or separator can only be one over-long field.
WIDEST_CHAR = 6
CHUNK_BYTES = 1 << 24        # decompression and scanning step
SCAN_BLOCK = 1 << 12         # resolution of the over-long field scan
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
    blank line of JSON lines, a repeated JSON key, a file pyarrow cannot read as parquet, and
    anything past the bounds of the module docstring. A short row's missing trailing fields are
    None (so the column mapping reports them). NUL characters are removed with a warning
    (`clean_text`): they are never meaningful text and break the C parser.
    """
    path = Path(path)
    try:
        return _read_table(path, fmt, header, sep, encoding)
    except MemoryError:
        raise PipelineError(f"{path}: out of memory while reading it (PIPELINE_MAX_INPUT_BYTES bounds the bytes "
                            f"of one file, now {bound('MAX_INPUT_BYTES')})") from None


def _read_table(path: Path, fmt: str, header: bool, sep: Optional[str], encoding: str) -> pd.DataFrame:
    """read_table's chain: bytes, decompressed, decoded, parsed, checked by `_finish`."""
    name, data = _decompress(_read_bytes(path), path, fmt, sep)
    fmt = detect_format(Path(name), fmt)
    if fmt == "parquet":
        df, records = _read_parquet(data, path)
    else:
        compressed = path.suffix.lower() in COMPRESSIONS
        text = _drop_nuls(_decode(data, path, encoding, compressed), path)
        del data  # the bytes are no longer needed: do not hold the file twice while parsing
        df, records = _parse_text(text, fmt, path, header, _separator(sep, fmt, path))
    return _finish(df, path, header and fmt in ("csv", "tsv"), records)


def clean_text(text: str) -> str:
    """A text from outside (a file's cell, a request's field) as the pipeline keeps it: without NUL
    characters, which are never meaningful text and break parsers. Files and the server both call
    this, so a row predicts the same wherever it came from."""
    return text.replace("\x00", "") if "\x00" in text else text


def bound(name: str) -> int:
    """The bound `name` ("MAX_INPUT_BYTES" or "MAX_FIELD_BYTES"): the environment variable
    PIPELINE_<name> where it is set, else the module constant of that name."""
    default = {"MAX_INPUT_BYTES": MAX_INPUT_BYTES, "MAX_FIELD_BYTES": MAX_FIELD_BYTES}[name]
    raw = os.environ.get(f"PIPELINE_{name}", "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) < 1:
        raise PipelineError(f"environment: PIPELINE_{name}={raw[:40]!r} must be a whole number of bytes, at least 1")
    return int(raw)


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
    """The file's bytes; refused when empty or bigger than MAX_INPUT_BYTES (before reading it)."""
    cap = bound("MAX_INPUT_BYTES")
    with contextlib.suppress(OSError):  # a missing or unreadable file: read_bytes names the problem
        if path.is_file() and path.stat().st_size > cap:
            raise PipelineError(_too_big(path, cap, f"has {path.stat().st_size} bytes"))
    data = read_bytes(path)
    if not data:
        raise PipelineError(f"{path}: file is empty")
    return data


def _too_big(path: Path, cap: int, what: str) -> str:
    """The one line for a file past MAX_INPUT_BYTES; `what` says by how much or where."""
    return (f"{path}: {what}, more than the bound of {cap} bytes for one input file "
            "(set PIPELINE_MAX_INPUT_BYTES to read a bigger one)")


def _decompress(data: bytes, path: Path, fmt: str, sep: Optional[str]) -> tuple[str, bytes]:
    """(name whose suffix tells the format, decompressed bytes), chosen by the file's suffix.

    Plain files come back as they are. For a zip archive the name is its one member's. Text is
    scanned for over-long fields on the way (`_FieldScan`), compressed data as it streams out."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return _unzip(data, path, fmt, sep)
    if suffix not in COMPRESSIONS:
        _FieldScan.of(path.name, path, fmt, sep)(data)
        return path.name, data
    if path.name.lower().removesuffix(suffix).endswith(".tar"):
        raise PipelineError(f"{path}: tar archives are not read; extract the data file (or compress it alone)")
    what = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}[suffix]
    module = {".gz": gzip, ".bz2": bz2, ".xz": lzma}[suffix]
    name = path.name[: -len(suffix)]
    try:
        with module.open(io.BytesIO(data)) as stream:
            out = _read_capped(stream, path, _FieldScan.of(name, path, fmt, sep))
    except (EOFError, ValueError, OSError, zlib.error, lzma.LZMAError) as e:
        raise PipelineError(f"{path}: not a readable {what} file ({_compression_problem(e)})") from None
    if not out:
        raise PipelineError(f"{path}: file is empty (after decompression)")
    return name, out


def _read_capped(stream: Any, path: Path, scan: Callable[[bytes], None]) -> bytes:
    """All of a decompressing stream, chunk by chunk: refused as soon as it passes MAX_INPUT_BYTES
    (a small archive may hold a huge file), each chunk scanned as it arrives."""
    cap, out = bound("MAX_INPUT_BYTES"), io.BytesIO()
    while chunk := stream.read(CHUNK_BYTES):
        if out.tell() + len(chunk) > cap:
            raise PipelineError(_too_big(path, cap, "decompresses to more bytes than that"))
        scan(chunk)
        out.write(chunk)
    return out.getvalue()


def _compression_problem(e: Exception) -> str:
    # The decompressors' own words for a cut-off file are about "end-of-stream markers".
    if "ended before the end-of-stream marker" in str(e):
        return "truncated: the compressed data ends early"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _unzip(data: bytes, path: Path, fmt: str, sep: Optional[str]) -> tuple[str, bytes]:
    """The one file inside a zip archive: with two there is no telling which one is meant."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1:
                names = ", ".join(repr(m.filename) for m in members[:5]) + (", ..." if len(members) > 5 else "")
                raise PipelineError(f"{path}: a zip archive must hold exactly one file, this one holds "
                                    f"{len(members)}{': ' + names if members else ''}")
            name = Path(members[0].filename).name
            with archive.open(members[0]) as stream:
                out = _read_capped(stream, path, _FieldScan.of(name, path, fmt, sep))
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise PipelineError(f"{path}: not a readable zip archive ({_compression_problem(e)})") from None
    except (RuntimeError, NotImplementedError) as e:  # encrypted, or a compression method zipfile lacks
        raise PipelineError(f"{path}: cannot read its member ({e})") from None
    if not out:
        raise PipelineError(f"{path}: file is empty (its member {members[0].filename!r})")
    return name, out


class _FieldScan:
    """Refuses text holding a run of more than WIDEST_CHAR * MAX_FIELD_BYTES bytes without a newline,
    quote, tab, comma or data.sep: such a run can only lie inside one field, and one over the bound.
    Called on each chunk as it is read, so a file of one giant field (a tiny .xz of 1 GiB of one
    letter) stops after a few MiB instead of being decoded and parsed several copies over. Exact
    field sizes are checked on the table (`_refuse_bad_fields`); this only stops the blow-up, so it
    looks at blocks of SCAN_BLOCK bytes: a run is counted by its blocks free of such bytes, which
    never overstates it (no false refusal) and misses at most two blocks of it."""

    def __init__(self, path: Path, sep: Optional[str]):
        self.path, self.limit = path, bound("MAX_FIELD_BYTES")
        self.stops = np.zeros(256, dtype=bool)
        self.stops[list(b'\n\r\t,"' + (sep or "").encode("utf-8", "replace"))] = True
        self.run, self.line = 0, 1   # bytes of stop-free blocks before the chunk; lines before it

    @classmethod
    def of(cls, name: str, path: Path, fmt: str, sep: Optional[str]) -> Callable[[bytes], None]:
        """The scan for a file whose format the name `name` tells; none for parquet (binary pages
        may hold long runs of any byte)."""
        if detect_format(Path(name), fmt) == "parquet":
            return lambda data: None
        return cls(path, sep)

    def __call__(self, data: bytes) -> None:
        for start in range(0, len(data), CHUNK_BYTES):  # bounded temporary arrays for a whole file too
            self._chunk(data, start, min(start + CHUNK_BYTES, len(data)))

    def _chunk(self, data: bytes, start: int, end: int) -> None:
        hit = self.stops[np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)]
        starts = np.arange(0, len(hit), SCAN_BLOCK)
        free = ~np.logical_or.reduceat(hit, starts)        # (blocks,) True where a block has no stop byte
        for first, block_free in zip(starts.tolist(), free.tolist()):
            size = min(SCAN_BLOCK, len(hit) - first)
            self.run = self.run + size if block_free else 0
            if self.run > WIDEST_CHAR * self.limit:
                line = self.line + data.count(b"\n", start, start + first)
                raise PipelineError(f"{self.path} line {line}: a field longer than the bound of {self.limit} bytes "
                                    f"(at least {self.run} bytes without a separator, quote or newline; set "
                                    "PIPELINE_MAX_FIELD_BYTES to allow longer fields)")
        self.line += data.count(b"\n", start, end)


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
    """`clean_text` of a whole file's text, with a warning saying how many NULs went."""
    if "\x00" in text:
        log.warning("%s: removed %d NUL characters", path, text.count("\x00"))
    return clean_text(text)


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
        is_array = text.startswith("[", _JSON_SPACE.match(text).end())
        return _read_json_array(text, path) if is_array else _read_jsonl(text, path)
    try:
        return _read_delimited(text, fmt, path, header, sep)
    except (pd.errors.ParserError, ValueError, csv.Error) as e:
        raise PipelineError(f"{path}: cannot parse as {fmt}: {str(e).strip().splitlines()[-1]}") from None


# ----------------------------------------------------------------------------- CSV / TSV


def _quoting(fmt: str) -> int:
    # TSV files such as GLUE's hold bare double quotes inside fields: quoting must be off.
    return csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL


@contextlib.contextmanager
def _field_size_limit() -> Iterator[None]:
    """Lift the csv module's field limit (128 KiB) for one read only: it is process-wide state.
    Fields are bounded by MAX_FIELD_BYTES, checked with a clearer message than the csv module's."""
    old = csv.field_size_limit(max(csv.field_size_limit(), bound("MAX_INPUT_BYTES")))
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
    with _field_size_limit():
        return [c.strip() for c in next(_records(text, fmt, sep), [])]


def _count_records(text: str, fmt: str, sep: str) -> tuple[int, int]:
    """(records of `text` by the csv module, fields of the first non-blank one): the count the
    table must match whatever pandas does with blank lines, and the width of a header-less file."""
    n, width = 0, 0
    with _field_size_limit():
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
        with _field_size_limit(), _warnings_as_errors(pd.errors.ParserWarning):
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


_JSON_SPACE = re.compile(r"[ \t\n\r]*")   # what JSON itself counts as white space


class _Number(str):
    """A JSON number (or NaN/Infinity) kept as the text written in the file: 1e5, 1.50, -0."""


class _RepeatedKey(Exception):
    """A JSON object names a key twice (raised from inside json's parser, turned into one line)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """object_pairs_hook: json keeps the last of two equal keys silently; a repeated key is refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _decoder() -> json.JSONDecoder:
    """json's decoder keeping numbers as written (_Number) and refusing repeated keys."""
    return json.JSONDecoder(parse_int=_Number, parse_float=_Number, parse_constant=_Number,
                            object_pairs_hook=_unique_keys)


def _json_value(decoder: json.JSONDecoder, text: str, pos: int, path: Path, line: int,
                first: int = 1) -> tuple[Any, int]:
    """(value, end) of the JSON value at text[pos:] (json's raw_decode), refused with one line naming
    `line` (the value's first line) where it repeats a key or nests deeper than MAX_JSON_DEPTH, and
    the line of the fault where it is invalid JSON (`first`: the file's line number of text's first)."""
    try:
        value, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path} line {first + e.lineno - 1}: invalid JSON ({e.msg})") from None
    except _RepeatedKey as e:
        raise PipelineError(f"{path} line {line}: key {_short(e.args[0])} appears twice in one object "
                            "(JSON would keep only the last value)") from None
    except RecursionError:  # json's parser recurses per level and stops near Python's limit, far past ours
        raise PipelineError(_too_deep(path, line)) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise PipelineError(_too_deep(path, line))
    return value, end


def _short(key: str) -> str:
    """repr of a key cut to about 80 characters, for one-line errors."""
    return repr(key if len(key) <= 80 else key[:77] + "...")


def _too_deep(path: Path, line: int) -> str:
    return f"{path} line {line}: JSON nested deeper than the bound of {MAX_JSON_DEPTH} levels"


def _depth(value: Any) -> int:
    """Nesting levels of a parsed JSON value (a scalar 0, [] or {} 1), without recursing; stops
    counting past MAX_JSON_DEPTH."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, level = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((x, level + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _read_jsonl(text: str, path: Path) -> tuple[pd.DataFrame, int]:
    """(table, lines): every line one JSON object, so one row; a blank line is refused by its
    number, since it cannot be a row and skipping it would hide a line that went missing."""
    # split("\n"), not splitlines(): U+2028 and friends are legal inside a JSON string.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no row
    decoder, rows = _decoder(), []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise PipelineError(f"{path} line {i}: blank line (in JSON lines each line is one row; remove it, "
                                "or write {} for a row with no values)")
        obj, end = _json_value(decoder, line, _JSON_SPACE.match(line).end(), path, i, first=i)
        if _JSON_SPACE.match(line, end).end() != len(line):
            raise PipelineError(f"{path} line {i}: invalid JSON (Extra data)")
        if not isinstance(obj, dict):
            raise PipelineError(f"{path} line {i}: expected a JSON object, got {_json_kind(obj)}")
        rows.append(_json_row(obj))
    return pd.DataFrame(rows, dtype=object), len(lines)


def _read_json_array(text: str, path: Path) -> tuple[pd.DataFrame, int]:
    """(table, items) of a JSON array of objects: one row per item."""
    items = _json_items(text, path)
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise PipelineError(f"{path} row {i + 1}: expected an array of JSON objects, item {i + 1} "
                                f"is {_json_kind(obj)}")
    return pd.DataFrame([_json_row(obj) for obj in items], dtype=object), len(items)


def _json_items(text: str, path: Path) -> list[Any]:
    """The items of the JSON array that is `text`, parsed one at a time so that an error names the
    line of its item (json.loads of the whole array could not say which item repeats a key)."""
    decoder, items, line, counted = _decoder(), [], 1, 0
    pos = _JSON_SPACE.match(text, _JSON_SPACE.match(text).end() + 1).end()  # past "[" and the space after
    while not text.startswith("]", pos) or items:  # "]" ends the array, except right after a ","
        line, counted = line + text.count("\n", counted, pos), pos
        value, pos = _json_value(decoder, text, pos, path, line)
        items.append(value)
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith("]", pos):
            break
        if not text.startswith(",", pos):
            raise PipelineError(f"{path} line {line + text.count(chr(10), counted, pos)}: invalid JSON "
                                "(Expecting ',' delimiter)")
        pos = _JSON_SPACE.match(text, pos + 1).end()
    end = _JSON_SPACE.match(text, pos + 1).end()
    if end != len(text):
        raise PipelineError(f"{path} line {line + text.count(chr(10), counted, end)}: invalid JSON (Extra data)")
    return items


def _json_kind(v: Any) -> str:
    if isinstance(v, _Number):
        return "a number"
    return {str: "a string", list: "an array", bool: "a boolean", type(None): "null"}.get(type(v), type(v).__name__)


def _json_row(obj: dict) -> dict:
    return {k: (None if v is None else _json_cell(v)) for k, v in obj.items()}


def _json_cell(v: Any) -> str:
    if isinstance(v, str) and not isinstance(v, _Number):
        return clean_text(v)  # an escaped \u0000 survives json's parser; it goes like a raw NUL
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
    """(table, the file's row count). Columns converted to text the way JSON values are (ints
    without .0, true/false). Parquet's compression and dictionaries make a tiny file of gigabytes
    easy, so sizes are checked before any cell becomes a Python object: the metadata before any
    page is read, then the text cells with their dictionaries still unexpanded."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PipelineError(f"{path}: reading parquet needs pyarrow (pip install -r requirements.txt)") from None
    try:
        meta = pq.ParquetFile(pa.BufferReader(data)).metadata
        _refuse_parquet_size(meta, path)
        texts = [f.name for f in meta.schema.to_arrow_schema() if _is_text(f.type)]
        table = pq.read_table(pa.BufferReader(data), read_dictionary=texts)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PipelineError(f"{path}: not a readable parquet file ({str(e).strip().splitlines()[0]})") from None
    _refuse_repeated([n.strip() for n in table.column_names], path, "in the parquet schema")
    _refuse_parquet_text(table, path)
    columns = {name: _arrow_texts(table.column(name).to_pylist(), path, name) for name in table.column_names}
    return (pd.DataFrame(columns, dtype=object) if columns else pd.DataFrame()), table.num_rows


def _refuse_parquet_size(meta: Any, path: Path) -> None:
    """Before reading a page: the data unpacked, and its cells at 8 bytes each (a column of a
    billion equal numbers packs into a few bytes), must fit MAX_INPUT_BYTES."""
    cap = bound("MAX_INPUT_BYTES")
    pages = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    size = max(pages, 8 * meta.num_rows * meta.num_columns)
    if size > cap:
        raise PipelineError(_too_big(path, cap, f"holds about {size} bytes of data once its pages are unpacked"))


def _refuse_parquet_text(table: Any, path: Path) -> None:
    """The text and binary cells, measured in arrow: each within MAX_FIELD_BYTES (the first one
    over named by row and column), all together within MAX_INPUT_BYTES."""
    import pyarrow.compute as pc

    cap, limit, total = bound("MAX_INPUT_BYTES"), bound("MAX_FIELD_BYTES"), 0
    for name, column in zip(table.column_names, table.columns):
        offset = 0
        for chunk in column.chunks:
            lengths = _arrow_lengths(chunk)
            if lengths is not None and (pc.max(lengths).as_py() or 0) > limit:
                row = offset + pc.index(pc.greater(lengths, limit), True).as_py()
                raise PipelineError(f"{path} row {row + 1}: column {_short(name)} holds "
                                    f"{lengths[row - offset].as_py()} bytes, {_OVER_FIELD_BOUND.format(limit)}")
            total += 0 if lengths is None else (pc.sum(lengths).as_py() or 0)
            offset += len(chunk)
    if total > cap:
        raise PipelineError(_too_big(path, cap, f"holds {total} bytes of text once its pages are unpacked"))


def _is_text(arrow_type: Any) -> bool:
    """Whether an arrow type holds strings or bytes (whose sizes the parquet checks measure)."""
    import pyarrow as pa

    return any(f(arrow_type) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                       pa.types.is_large_binary))


def _arrow_lengths(chunk: Any) -> Any:
    """The byte length of each cell of a text or binary arrow array (a dictionary one too, measured
    without expanding it); None for other types."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(chunk.type) and _is_text(chunk.type.value_type):
        return pc.take(pc.binary_length(chunk.dictionary), chunk.indices)
    return pc.binary_length(chunk) if _is_text(chunk.type) else None


def _arrow_texts(values: list, path: Path, column: str) -> list[Optional[str]]:
    out = [v if isinstance(v, str) or v is None else _arrow_cell(v, path, column, i) for i, v in enumerate(values)]
    n_nul = sum(v.count("\x00") for v in out if v is not None and "\x00" in v)
    if n_nul:
        log.warning("%s: removed %d NUL characters from column %r", path, n_nul, column)
        out = [clean_text(v) if v is not None else None for v in out]
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
    format on its own), names unique once stripped, at least one row, every field Unicode text
    within MAX_FIELD_BYTES; missing cells None."""
    if len(df) != records:  # the one check that no reader drops, splits or merges a row unseen
        raise PipelineError(f"{path}: read {len(df)} rows but the file holds {records} records; refusing a "
                            "table that would misalign ids and rows")
    # Positions (header=False) stay ints; names are stripped, which may make two of them equal.
    df.columns = [c.strip() if isinstance(c, str) else c for c in df.columns]
    _refuse_repeated(list(df.columns), path, "(after stripping spaces)")
    if len(df) == 0:
        raise PipelineError(f"{path}: no data rows{' (header only)' if has_header else ''}")
    # Short rows and absent JSON keys come back as NaN; missing is None, never the string "nan".
    df = df.astype(object).where(df.notna(), None)
    _refuse_bad_fields(df, path)
    return df


def _refuse_bad_fields(df: pd.DataFrame, path: Path) -> None:
    """One line naming the first cell (or column name) that is no text the pipeline can keep: over
    MAX_FIELD_BYTES of UTF-8, or holding an unpaired surrogate (a JSON \\ud800 escape, which the
    server refuses too; writing it out would fail later with a traceback). Any format."""
    limit = bound("MAX_FIELD_BYTES")
    for name in df.columns:
        if isinstance(name, str) and _field_problem(name, limit):
            raise PipelineError(f"{path}: column name {_short(name)} {_field_problem(name, limit)}")
    for j, name in enumerate(df.columns):
        for i, v in enumerate(df.iloc[:, j].tolist()):
            if v is not None and not (v.isascii() and len(v) <= limit):  # the fast path: short ASCII
                problem = _field_problem(v, limit)
                if problem:
                    column = _short(name) if isinstance(name, str) else name
                    raise PipelineError(f"{path} row {i + 1}: column {column} {problem}")


def _field_problem(text: str, limit: int) -> Optional[str]:
    """Why `text` cannot be a field (not Unicode, or too long in UTF-8), or None."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "holds an unpaired surrogate escape (such as \\ud800), which is not Unicode text"
    if size > limit:
        return f"holds {size} bytes, {_OVER_FIELD_BOUND.format(limit)}"
    return None


_OVER_FIELD_BOUND = "more than the bound of {} bytes for one field (set PIPELINE_MAX_FIELD_BYTES to allow longer fields)"
