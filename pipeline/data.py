"""Raw competition files -> typed tables; the Split that the K-fold driver hands to models."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from .errors import PipelineError
from .readers import clean_text, read_table

log = logging.getLogger("pipeline.data")

VIEWS = ("raw", "lower", "lemma")
Column = Union[str, int]  # a column name, or with data.header=false a 0-based position
# The data section of a config (config.DataConfig): config builds on this module, not the reverse.
DataConfig = Any


@dataclass
class RawTable:
    """One input file after column mapping; texts are str ('' where empty was allowed)."""
    name: str
    ids: list[str]
    text_a: list[str]
    text_b: Optional[list[str]]
    labels: Optional[list]               # stripped label strings (a list of them per row where data.label
                                         # is a list of columns), None for unlabelled files
    groups: Optional[list[str]] = None
    n_empty: int = 0
    # Where the ids came from, for the submission summary: "column 'id'" (data.id / data.test_id),
    # "column 'ID' (detected)" (a conventional name, test file only), "column 3" or "row numbers".
    id_source: str = "row numbers"
    id_column: Optional[str] = None      # the id column's header name; None for row numbers or no header


@dataclass
class Table:
    """A prepared table: every text view, integer labels, ids.

    views[v] = (text_a, text_b or None), lists of n strings. y: the task's labels (pipeline/tasks.py:
    (n,) int64 classes, (n,) float64 targets or (n, L) int64 0/1) or None.
    """
    name: str
    ids: list[str]
    views: dict[str, tuple[list[str], Optional[list[str]]]]
    y: Optional[np.ndarray]
    groups: Optional[list[str]] = None
    segmented: bool = False   # lower/lemma hold word-segmented text (Chinese) that raw lacks

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_pair(self) -> bool:
        return self.views["raw"][1] is not None


@dataclass
class Split:
    """Rows drawn from one or more tables (train rows, plus pseudo-labelled test rows).

    parts: [(table, rows)] with rows an int array of positions; y: the rows' labels (first axis n) or None.
    """
    parts: list[tuple[Table, np.ndarray]]
    y: Optional[np.ndarray] = None
    name: str = ""
    sample_weight: Optional[np.ndarray] = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(sum(len(r) for _, r in self.parts))

    @property
    def is_pair(self) -> bool:
        return self.parts[0][0].is_pair

    def texts(self, view: str) -> tuple[list[str], Optional[list[str]]]:
        a: list[str] = []
        b: Optional[list[str]] = [] if self.is_pair else None
        for table, rows in self.parts:
            ta, tb = table.views[view]
            a.extend(ta[i] for i in rows)
            if b is not None:
                b.extend(tb[i] for i in rows)
        return a, b

    def keys(self) -> list[tuple[str, int]]:
        """(table name, row) for every row: the identity models use for caches and tests for leakage."""
        return [(t.name, int(i)) for t, rows in self.parts for i in rows]


def whole(table: Table) -> Split:
    return Split([(table, np.arange(len(table)))], table.y, name=table.name)


# ----------------------------------------------------------------------------- loading raw files

# Column names that mean "the row's id" in competition test files, in the order they are tried.
CONVENTIONAL_IDS = ("id", "ID", "Id", "index")


def read_raw(cfg: DataConfig, which: str, base: Path, group_col: Optional[Column] = None) -> RawTable:
    """Read the train or test file through the column mapping of `cfg`.

    A column key that is a str names a header column; an int is a 0-based position, the only way
    to name a column with data.header=false (a str is then refused before the file is read).

    Ids: the column data.id (test file: data.test_id, else data.id). With both unset, the test file
    uses the first of CONVENTIONAL_IDS it has as a column (a header-less file has none) and falls
    back to row numbers 0..n-1 with a warning, since those become the submission's ids. The train
    file keeps row numbers even when it has such a column: train ids only key folds.csv, and reading
    them from a column would turn a repeated or blank value there into an error and make the
    folds.csv of an existing experiment stale, for no gain.
    """
    path = base / (cfg.train if which == "train" else cfg.test)
    if not cfg.header:
        _refuse_names(cfg, group_col)
    df = read_table(path, cfg.format, header=cfg.header, sep=cfg.sep, encoding=cfg.encoding)
    limit = cfg.max_train_rows if which == "train" else cfg.max_test_rows
    if limit is not None:
        df = df.iloc[:limit]
    ids, id_source, id_column = _ids(df, cfg, which, path)
    text_a, na = _texts(_column(df, cfg.text_a, path, "data.text_a"), cfg.text_a, path, cfg.on_empty_text)
    text_b, nb = (None, 0)
    if cfg.text_b is not None:
        text_b, nb = _texts(_column(df, cfg.text_b, path, "data.text_b"), cfg.text_b, path, cfg.on_empty_text)
    labels = _labels(df, cfg, which, path)
    groups = None
    if group_col is not None:
        groups = _stripped(_column(df, group_col, path, "folds.group_column"))
        if "" in groups:
            raise PipelineError(f"{path} row {groups.index('') + 1}: missing group in column {group_col!r}")
    return RawTable(which, ids, text_a, text_b, labels, groups, na + nb, id_source, id_column)


def _refuse_names(cfg: DataConfig, group_col: Optional[Column]) -> None:
    """With data.header=false a file has no names: every column key must be a position."""
    keys = {f"data.{k}": getattr(cfg, k) for k in ("id", "text_a", "text_b", "label", "test_id", "test_label")}
    keys["folds.group_column"] = group_col
    for key, value in keys.items():
        col = next((c for c in (value if isinstance(value, list) else [value]) if isinstance(c, str)), None)
        if col is not None:
            raise PipelineError(f"config: {key} is {col!r}, a column name, but data.header is false: "
                                f"name the column by its 0-based position (e.g. {key}: 0 for the first column)")


def _position(df: pd.DataFrame, col: Column) -> Optional[int]:
    """0-based position of a column named or numbered `col`; None when the file lacks it."""
    if isinstance(col, int):
        return col if 0 <= col < df.shape[1] else None
    return df.columns.get_loc(col) if col in df.columns else None


def _column(df: pd.DataFrame, col: Column, path: Path, key: str) -> list:
    pos = _position(df, col)
    if pos is not None:
        return df.iloc[:, pos].tolist()
    if isinstance(col, int):
        raise PipelineError(f"{path}: no column at position {col} ({key}; positions are 0-based and the file "
                            f"has {df.shape[1]} columns: 0..{df.shape[1] - 1})")
    raise PipelineError(f"{path}: missing column {col!r} (columns found: {', '.join(map(str, df.columns))})")


def _stripped(values: list) -> list[str]:
    return [("" if v is None else str(v)).strip() for v in values]


def _ids(df: pd.DataFrame, cfg: DataConfig, which: str, path: Path) -> tuple[list[str], str, Optional[str]]:
    """(ids, where they came from, the id column's header name or None); see read_raw."""
    key, col = ("data.test_id", cfg.test_id) if which == "test" and cfg.test_id is not None else ("data.id", cfg.id)
    detected = col is None and which == "test" and cfg.header
    if detected:
        col = next((c for c in CONVENTIONAL_IDS if c in df.columns), None)
    if col is None:
        if which == "test":
            why = "no column is named " + ", ".join(CONVENTIONAL_IDS) if cfg.header else "the file has no header"
            log.warning("%s: no id column (data.id is unset and %s): the submission ids will be row numbers 0..%d",
                        path, why, len(df) - 1)
        return [str(i) for i in range(len(df))], "row numbers", None
    ids = _stripped(_column(df, col, path, key))
    hint = " (found by its name because data.id is unset; set data.test_id to pick the id column)" if detected else ""
    _check_ids(ids, path, col, hint)
    if detected:
        log.info("%s: ids from column %r (data.id is unset; it is the first of %s the file has)",
                 path, col, "/".join(CONVENTIONAL_IDS))
    name = df.columns[_position(df, col)] if cfg.header else None
    return ids, f"column {col!r}" + (" (detected)" if detected else ""), name


def _labels(df: pd.DataFrame, cfg: DataConfig, which: str, path: Path) -> Optional[list]:
    """Stripped labels; the test file's only when data.test_label names columns it has. With a
    list of label columns (multilabel), one list of strings per row."""
    cols, key = (cfg.label, "data.label") if which == "train" else (cfg.test_label, "data.test_label")
    if cols is None:
        return None
    many = isinstance(cols, list)
    cols = cols if many else [cols]
    if which == "test" and any(_position(df, c) is None for c in cols):
        log.warning("%s: no column %r (data.test_label); test scores are not computed", path,
                    next(c for c in cols if _position(df, c) is None))
        return None
    per_column = [_label_column(df, c, path, key) for c in cols]
    return [list(row) for row in zip(*per_column)] if many else per_column[0]


def _label_column(df: pd.DataFrame, col: Column, path: Path, key: str) -> list[str]:
    labels = _stripped(_column(df, col, path, key))
    missing = [i for i, v in enumerate(labels) if v == ""]
    if missing:
        raise PipelineError(f"{path} row {missing[0] + 1}: missing label in column {col!r}")
    return labels


def text_value(v) -> str:
    """One text as the pipeline keeps it, wherever it came from (a file's cell, a served request):
    NUL characters dropped (readers.clean_text), and "" for a missing, blank or whitespace-only
    one, which data.on_empty_text then allows or refuses."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    text = clean_text(str(v))
    return text if text.strip() else ""


def _texts(values: list, col: Column, path: Path, on_empty: str) -> tuple[list[str], int]:
    out, n_empty = [], 0
    for i, v in enumerate(values):
        if text_value(v) == "":
            if on_empty == "error":
                raise PipelineError(f"{path} row {i + 1}: empty text in column {col!r} "
                                    "(set data.on_empty_text=empty to treat it as an empty string)")
            n_empty += 1
        out.append(text_value(v))
    return out, n_empty


def _check_ids(ids: list[str], path: Path, col: Column, hint: str = "") -> None:
    """Ids are the submission's key: each row needs one, and no two rows may share it."""
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if x == "":
            raise PipelineError(f"{path} row {i + 1}: missing id in column {col!r}{hint}")
        if x in seen:
            raise PipelineError(f"{path}: duplicate id {x!r} in column {col!r} (rows {seen[x] + 1} and {i + 1}){hint}")
        seen[x] = i


def class_order(labels: list[str]) -> list[str]:
    """Sorted class names; numerically when every label is a plain ASCII integer ("2" before "10").

    int() would also take "٣" and "1_000", and two names equal as numbers ("1", "01") would come
    out in the set's order, which changes from run to run: ties sort by the name."""
    uniq = set(labels)
    if all(re.fullmatch(r"[+-]?[0-9]+", c) for c in uniq):
        return sorted(uniq, key=lambda c: (int(c), c))
    return sorted(uniq)


def encode_labels(labels: list[str], classes: list[str], path: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    for i, v in enumerate(labels):
        if v not in index:
            raise PipelineError(f"{path} row {i + 1}: label {v!r} not seen in train (classes: {', '.join(classes)})")
    return np.array([index[v] for v in labels], dtype=np.int64)


def label_to_json(value) -> object:
    """One row's label as JSON: a class index (int), a target (float) or 0/1 labels (list)."""
    if np.ndim(value) == 1:
        return [int(v) for v in value]
    return float(value) if isinstance(value, np.floating) else int(value)


def labels_from_json(values: list) -> np.ndarray:
    """The inverse of label_to_json over a column: (n,) int64, (n,) float64 or (n, L) int64."""
    if isinstance(values[0], list):
        return np.array(values, dtype=np.int64).reshape(len(values), -1)
    return np.array(values, dtype=np.float64 if isinstance(values[0], float) else np.int64)
