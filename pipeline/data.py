"""Raw competition files -> typed tables; the Split that the K-fold driver hands to models."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .config import DataConfig
from .errors import PipelineError
from .io import read_table

log = logging.getLogger("pipeline.data")

VIEWS = ("raw", "lower", "lemma")


@dataclass
class RawTable:
    """One input file after column mapping; texts are str ('' where empty was allowed)."""
    name: str
    ids: list[str]
    text_a: list[str]
    text_b: Optional[list[str]]
    labels: Optional[list[str]]          # stripped label strings, None for unlabelled files
    groups: Optional[list[str]] = None
    n_empty: int = 0


@dataclass
class Table:
    """A prepared table: every text view, integer labels, ids.

    views[v] = (text_a, text_b or None), lists of n strings. y: (n,) int64 or None.
    """
    name: str
    ids: list[str]
    views: dict[str, tuple[list[str], Optional[list[str]]]]
    y: Optional[np.ndarray]
    groups: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_pair(self) -> bool:
        return self.views["raw"][1] is not None


@dataclass
class Split:
    """Rows drawn from one or more tables (train rows, plus pseudo-labelled test rows).

    parts: [(table, rows)] with rows an int array of positions; y: (n,) int labels or None.
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


def _column(df: pd.DataFrame, col: str, path: Path) -> list:
    if col not in df.columns:
        raise PipelineError(f"{path}: missing column {col!r} (columns found: {', '.join(map(str, df.columns))})")
    return df[col].tolist()


def _texts(values: list, col: str, path: Path, on_empty: str) -> tuple[list[str], int]:
    out, n_empty = [], 0
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            if on_empty == "error":
                raise PipelineError(f"{path} row {i + 1}: empty text in column {col!r} "
                                    "(set data.on_empty_text=empty to treat it as an empty string)")
            n_empty += 1
            out.append("")
        else:
            out.append(str(v))
    return out, n_empty


def _check_ids(ids: list[str], path: Path, col: Optional[str]) -> None:
    """Ids are the submission's key: each row needs one, and no two rows may share it."""
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if x == "":
            raise PipelineError(f"{path} row {i + 1}: missing id in column {col!r}")
        if x in seen:
            raise PipelineError(f"{path}: duplicate id {x!r} in column {col!r} (rows {seen[x] + 1} and {i + 1})")
        seen[x] = i


def read_raw(cfg: DataConfig, which: str, base: Path, group_col: Optional[str] = None) -> RawTable:
    """Read the train or test file through the column mapping of `cfg`."""
    path = base / (cfg.train if which == "train" else cfg.test)
    df = read_table(path, cfg.format)
    limit = cfg.max_train_rows if which == "train" else cfg.max_test_rows
    if limit:
        df = df.iloc[:limit]
    id_col = cfg.id if which == "train" else (cfg.test_id or cfg.id)
    if id_col:
        ids = [("" if v is None else str(v)).strip() for v in _column(df, id_col, path)]
        _check_ids(ids, path, id_col)
    else:
        ids = [str(i) for i in range(len(df))]
    text_a, na = _texts(_column(df, cfg.text_a, path), cfg.text_a, path, cfg.on_empty_text)
    text_b, nb = (None, 0)
    if cfg.text_b:
        text_b, nb = _texts(_column(df, cfg.text_b, path), cfg.text_b, path, cfg.on_empty_text)
    label_col = cfg.label if which == "train" else cfg.test_label
    labels = None
    if label_col and which == "test" and label_col not in df.columns:
        log.warning("%s: no column %r (data.test_label); test scores are not computed", path, label_col)
    if label_col and (which == "train" or label_col in df.columns):
        labels = [("" if v is None else str(v)).strip() for v in _column(df, label_col, path)]
        missing = [i for i, v in enumerate(labels) if v == ""]
        if missing:
            raise PipelineError(f"{path} row {missing[0] + 1}: missing label in column {label_col!r}")
    groups = None
    if group_col:
        groups = [("" if v is None else str(v)).strip() for v in _column(df, group_col, path)]
        if "" in groups:
            raise PipelineError(f"{path} row {groups.index('') + 1}: missing group in column {group_col!r}")
    return RawTable(which, ids, text_a, text_b, labels, groups, na + nb)


def class_order(labels: list[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer ("2" before "10")."""
    uniq = set(labels)
    try:
        return sorted(uniq, key=int)
    except ValueError:
        return sorted(uniq)


def encode_labels(labels: list[str], classes: list[str], path: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    for i, v in enumerate(labels):
        if v not in index:
            raise PipelineError(f"{path} row {i + 1}: label {v!r} not seen in train (classes: {', '.join(classes)})")
    return np.array([index[v] for v in labels], dtype=np.int64)
