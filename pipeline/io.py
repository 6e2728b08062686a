"""Readers for CSV / TSV / JSON-lines files, atomic writers and file hashes."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from .errors import PipelineError

# ----------------------------------------------------------------------------- reading


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise PipelineError(f"file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # GLUE files start with a BOM
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PipelineError(f"{path}: not valid UTF-8 at byte {e.start} (line {line})") from None
    if not text.strip():
        raise PipelineError(f"{path}: file is empty")
    return text


def read_table(path: Path, fmt: str = "auto") -> pd.DataFrame:
    """Every cell as str (None where missing), column names stripped; no type guessing."""
    fmt = detect_format(path, fmt)
    text = _read_text(path)
    if "\x00" in text:
        # NUL bytes break the C parser and are never meaningful text.
        text = text.replace("\x00", "")
    try:
        if fmt == "jsonl":
            df = _read_jsonl(text, path)
        else:
            # TSV files such as GLUE's hold bare double quotes inside fields: quoting must be off.
            quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
            df = pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",", dtype=str,
                             keep_default_na=False, quoting=quoting, engine="python" if fmt == "tsv" else "c")
    except (pd.errors.ParserError, ValueError) as e:
        raise PipelineError(f"{path}: cannot parse as {fmt}: {str(e).strip().splitlines()[-1]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise PipelineError(f"{path}: no data rows (header only)")
    return df


def _read_jsonl(text: str, path: Path) -> pd.DataFrame:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{path} line {i}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise PipelineError(f"{path} line {i}: expected a JSON object")
        rows.append({k: (None if v is None else _json_cell(v)) for k, v in obj.items()})
    return pd.DataFrame(rows, dtype=object)


def _json_cell(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v)


# ----------------------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_strings(items: list[str]) -> str:
    """Hash of a list of strings that cannot collide across different splits into items."""
    return sha256_bytes(json.dumps(list(items), ensure_ascii=False).encode())


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A run killed at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_with(path: Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: Path, data: bytes) -> Path:
    return write_with(path, lambda t: t.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_npy(path: Path, array: np.ndarray) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    return write_with(path, save)


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    return write_with(path, lambda t: df.to_csv(t, index=False, lineterminator="\n"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None


def read_npy(path: Path) -> np.ndarray:
    """Load an array with pickles refused; a truncated or foreign file is one clear error."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PipelineError(f"file not found: {path}") from None
    except (ValueError, OSError, EOFError) as e:
        raise PipelineError(f"{path}: not a readable .npy matrix ({str(e).splitlines()[0]})") from None
