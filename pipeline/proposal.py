"""A first experiment proposed from the competition's files: the library half of `pipeline.init`.

`propose` reads the train and test files (and a sample submission) with the pipeline's own reader
and decides, each with the reason it gives: whether the files have a header row; the id, text and
label columns; the task type and its default metric; K (by the smallest class) and whether pairs
sharing a sentence must share a fold. Where the files leave two answers open (two text columns
not named as a pair, several columns that could be the label) it stops with one PipelineError
line naming the flag that settles it: it never picks silently.

Column keys are names, or 0-based positions for files without a header row, as in the config.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .data import CONVENTIONAL_IDS, Column, class_order
from .errors import PipelineError
from .fold_assignment import pair_groups
from .readers import detect_format, read_table
from .tasks import PLAIN_NUMBER, get as get_task
from .views import HAN, normalise

# Labels with at most this many distinct integers are classes (ratings 1-5, 0/1); more are a number.
MAX_INTEGER_CLASSES = 20
# Names that mean "the label" in competition files, tried when several columns could be it.
LABEL_NAMES = ("label", "labels", "target", "y", "class", "category", "score", "gold_label", "sentiment", "rating")
# A column named like a row id (id, ID, index, qid, pair_id, essayId): only such a column becomes data.id.
ID_NAME = re.compile(r"(?i:id|index|idx|uid|guid|qid|row_?id)|\w+[_-](?i:id)|[a-z]+Id")
# Two names that differ in one such token name the two sides of a pair (sentence1 / sentence2).
PAIR_MARKERS = ({"1", "2"}, {"a", "b"}, {"A", "B"}, {"first", "second"}, {"left", "right"})
# Pairs of names that competitions use for the two sides of a pair, first side first.
PAIR_NAMES = (("premise", "hypothesis"), ("question", "sentence"), ("question", "answer"), ("query", "passage"),
              ("query", "document"), ("anchor", "target"))
DEFAULT_FOLDS = 5
TEXT_SAMPLE = 5000   # rows whose texts measure words and tokens (the whole column decides the rest)


@dataclass
class Hints:
    """What the user's flags settle (None: decide from the files)."""
    id: Optional[str] = None
    text: Optional[list[str]] = None
    label: Optional[list[str]] = None
    task: Optional[str] = None
    metric: Optional[str] = None
    header: Optional[bool] = None
    encoding: str = "utf-8"


@dataclass
class Proposal:
    """What `propose` decided; `notes` holds why, one line per topic, printed and written as comments."""
    data: dict                 # the config's data section, keys in the order they are written
    task: str
    metric: str
    n_splits: int
    strategy: str
    submit_values: str
    n_train: int
    n_test: int
    is_pair: bool
    tokens: int                # a row's tokens (both texts), 95th percentile: what max_length should hold
    notes: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- columns


class Profile:
    """One column of the train file (and of the test file where it has it), as stripped strings."""

    def __init__(self, key: Column, train: pd.Series, test: Optional[pd.Series]):
        self.key = key
        self.train = _stripped(train)
        self.test = None if test is None else _stripped(test)

    @functools.cached_property
    def filled(self) -> pd.Series:
        return self.train[self.train != ""]

    @functools.cached_property
    def numeric(self) -> bool:
        return len(self.filled) > 0 and bool(self.filled.str.fullmatch(PLAIN_NUMBER.pattern).all())

    @functools.cached_property
    def fractional(self) -> bool:
        return self.numeric and bool((self.filled.astype(float) % 1 != 0).any())

    @functools.cached_property
    def distinct(self) -> int:
        return int(self.filled.nunique())

    @functools.cached_property
    def words(self) -> float:
        """Mean words per filled cell (a CJK ideograph counts as a word: Chinese has no spaces)."""
        sample = self.filled.iloc[:TEXT_SAMPLE]
        if sample.empty:
            return 0.0
        return float(sample.map(lambda t: len(t.split()) + len(HAN.findall(t))).mean())

    def unique_in(self, values: Optional[pd.Series]) -> bool:
        return values is not None and (values != "").all() and values.is_unique

    @property
    def texty(self) -> bool:
        """Holds text: several words a row, mostly distinct, not numbers."""
        return not self.numeric and self.words >= 3 and self.distinct >= 0.3 * max(len(self.filled), 1)

    @property
    def idlike(self) -> bool:
        """One token a row, (nearly) every row its own: an id of the row or of something in it."""
        return (not self.fractional and self.words <= 1 and len(self.filled) > 0
                and self.distinct >= 0.9 * len(self.filled))

    @property
    def binary(self) -> bool:
        return len(self.filled) == len(self.train) and set(self.filled.unique()) <= {"0", "1"}

    def show(self) -> str:
        return _show(self.key)


def _stripped(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "" if v is None else str(v).strip()).reset_index(drop=True)


def _show(key: Column) -> str:
    return f"column {key}" if isinstance(key, int) else repr(key)


def _shows(keys: list) -> str:
    return ", ".join(_show(k) for k in keys)


# ----------------------------------------------------------------------------- reading


@dataclass
class Tables:
    train: pd.DataFrame
    test: pd.DataFrame
    header: bool
    why_header: str


def read_tables(train: Path, test: Path, hints: Hints) -> Tables:
    """Both files through read_table, with or without a header row (hints.header, else decided)."""
    if hints.header is not None:
        return Tables(_read(train, hints.header, hints), _read(test, hints.header, hints), hints.header,
                      "as --header / --no-header says")
    if detect_format(train) not in ("csv", "tsv"):
        return Tables(_read(train, True, hints), _read(test, True, hints), True, "the format names its columns")
    try:
        named = _read(train, True, hints), _read(test, True, hints)
    except PipelineError:   # repeated "names" (two equal cells of a first data row): no header
        named = None
    if named is not None and _share_a_name(*named):
        return Tables(*named, True, "both files' first rows name their columns alike")
    if named is not None and _looks_named(named[0]):
        raise PipelineError(f"{train}: its first row looks like a header row ({_shows(list(named[0].columns))}) but "
                            f"the first row of {test} shares none of its names: give both files a header row, or "
                            "neither (--header / --no-header to say which)")
    return Tables(_read(train, False, hints), _read(test, False, hints), False,
                  "the two files' first rows share no column name, so they are data")


def _read(path: Path, header: bool, hints: Hints) -> pd.DataFrame:
    return read_table(path, "auto", header=header, encoding=hints.encoding)


def _share_a_name(train: pd.DataFrame, test: pd.DataFrame) -> bool:
    return any(c in train.columns and not PLAIN_NUMBER.fullmatch(str(c)) for c in test.columns)


def _looks_named(df: pd.DataFrame) -> bool:
    """A first row of names: some column of numbers is headed by a word."""
    return any(not PLAIN_NUMBER.fullmatch(str(c)) and Profile(c, df[c], None).numeric for c in df.columns)


def check_positions(cols: dict, train: Path, test: Path) -> None:
    """Without a header row a column key is a position in both files: a column that holds text in
    one file and not in the other means the test file's columns are in another order."""
    for key, p in cols.items():
        if p.test is not None and p.texty != Profile(key, p.test, None).texty:
            holds = ("text", "no text") if p.texty else ("no text", "text")
            raise PipelineError(f"the files have no header row, so a column is a position in both, but column {key} "
                                f"holds {holds[0]} in {train} and {holds[1]} in {test}: give the test file the train "
                                "file's column order (the label column may be missing at the end)")


def key_of(text: str, header: bool) -> Column:
    """A column named on the command line: a position where the files have no header row."""
    if not header:
        if not text.strip().isdigit():
            raise PipelineError(f"the files have no header row: name columns by 0-based position, not {text!r}")
        return int(text)
    return text.strip()


# ----------------------------------------------------------------------------- proposal


def propose(train: Path, test: Path, sample: Optional[Path], hints: Hints) -> Proposal:
    """Read the files and decide every data, task and folds setting of a first config."""
    t = read_tables(train, test, hints)
    cols = {c: Profile(c, t.train[c], t.test[c] if c in t.test.columns else None) for c in t.train.columns}
    if not t.header:
        check_positions(cols, train, test)
    notes = {"files": f"{len(t.train):,} train rows, {len(t.test):,} test rows; header row: "
                      f"{'yes' if t.header else 'no'} ({t.why_header})"}
    found = read_sample(sample, t.test, hints) if sample is not None else None
    id_col, id_where = choose_id(cols, t, found, hints, notes)
    if found is not None:
        check_sample(found, id_col, t)
    labels, submit_values = choose_labels(cols, t, found, hints, notes)
    texts = choose_texts(cols, t.header, [id_col] + labels, hints, notes)
    task = choose_task([cols[c] for c in labels], hints, notes)
    metric = choose_metric(task, submit_values, hints, notes)
    n_splits = choose_k(task, [cols[c] for c in labels], notes)
    pair = len(texts) == 2
    strategy = choose_strategy(task, [cols[c].train for c in texts], n_splits, notes)
    data = data_section(train, test, sample, t.header, hints.encoding, id_col, id_where, texts, labels, cols)
    empty = empty_texts(cols, texts)
    if empty:
        data["on_empty_text"] = "empty"
        notes["empty"] = f"{empty} empty texts: data.on_empty_text: empty keeps them as ''"
    return Proposal(data, task, metric, n_splits, strategy, submit_values, len(t.train), len(t.test), pair,
                    row_tokens([cols[c] for c in texts]), notes)


@dataclass
class Sample:
    """A sample submission: its id column (the one the test file has too, named like an id
    first), its prediction columns, and its ids."""
    path: Path
    names: list[str]
    id: str
    ids: set

    @property
    def predicted(self) -> list[str]:
        return [c for c in self.names if c != self.id]


def read_sample(path: Path, test: pd.DataFrame, hints: Hints) -> Sample:
    """The sample submission (it always has a header row)."""
    df = read_table(path, "auto", header=True, encoding=hints.encoding)
    names = [str(c) for c in df.columns]
    if len(names) < 2:
        raise PipelineError(f"{path}: a sample submission has an id column and prediction columns; it has {len(names)}")
    shared = [c for c in names if c in test.columns]
    key = ([c for c in shared if ID_NAME.fullmatch(c)] or shared or names)[0]
    return Sample(path, names, key, set(_stripped(df[key])))


def check_sample(sample: Sample, id_col: Optional[Column], t: Tables) -> None:
    """The sample's ids must be the test file's (the submission is matched on them), and with row
    numbers for ids, its id column must be where the submission looks for it."""
    ids = set(_stripped(t.test[id_col])) if id_col is not None else {str(i) for i in range(len(t.test))}
    if sample.ids != ids:
        only = sorted(sample.ids - ids)[:3] or sorted(ids - sample.ids)[:3]
        raise PipelineError(f"{sample.path}: its ids (column {sample.id!r}) are not the test file's "
                            f"{'ids' if id_col is not None else 'row numbers'} (e.g. {', '.join(only)} differ): "
                            "--id COL names the test file's id column")
    # the ensemble stage takes the sample's column named like the submission's id column, else its first
    name = id_col if isinstance(id_col, str) else "id"   # the submission's id column
    looked_at = name if name in sample.names else sample.names[0]
    if looked_at != sample.id:
        raise PipelineError(f"{sample.path}: its id column is {sample.id!r}; put it first (the submission "
                            f"takes the sample's first column for its ids)")


def choose_id(cols: dict, t: Tables, sample: Optional[Sample], hints: Hints,
              notes: dict) -> tuple[Optional[Column], str]:
    """(id column or None for row numbers, where it is: 'both' files or 'test' only)."""
    if hints.id is not None:
        key = key_of(hints.id, t.header)
        if key not in t.test.columns:
            raise PipelineError(f"--id {hints.id}: the test file has no such column "
                                f"(columns: {_shows(list(t.test.columns))})")
        return key, id_where(key, cols, notes, "as --id says")
    named = [c for c in t.test.columns if t.header and ID_NAME.fullmatch(str(c))]
    if sample is not None and sample.id in t.test.columns:   # the competition's id column
        named = [sample.id] + named
    for key in named:
        values = _stripped(t.test[key])
        if Profile(key, values, None).unique_in(values):
            return key, id_where(key, cols, notes, "named like an id and unique in the test file")
    notes["id"] = (f"none: no column is named like an id ({', '.join(CONVENTIONAL_IDS)}, *_id), so the test ids are "
                   f"row numbers 0..{len(t.test) - 1} (--id COL to name one)")
    return None, "none"


def id_where(key: Column, cols: dict, notes: dict, why: str) -> str:
    """'both' where the train file has the id column too, unique (data.id), else 'test' (data.test_id:
    train ids stay row numbers, which only key folds.csv)."""
    both = key in cols and cols[key].unique_in(cols[key].train)
    notes["id"] = f"{_show(key)}: {why}" + ("" if both else " (the train rows keep row numbers)")
    return "both" if both else "test"


def choose_labels(cols: dict, t: Tables, sample: Optional[Sample], hints: Hints,
                  notes: dict) -> tuple[list[Column], str]:
    """(label columns, what the submission holds: decisions or probabilities)."""
    if hints.label is not None:
        keys = [key_of(k, t.header) for k in hints.label]
        missing = [k for k in keys if k not in cols]
        if missing:
            raise PipelineError(f"--label: the train file has no column {_shows(missing)} "
                                f"(columns: {_shows(list(cols))})")
        notes["label"] = f"{_shows(keys)}, as --label says"
        return keys, "decisions"
    if sample is not None:
        found = labels_from_sample(cols, sample, notes)
        if found is not None:
            return found
    return label_by_values(cols, notes), "decisions"


def labels_from_sample(cols: dict, sample: Sample, notes: dict) -> Optional[tuple[list, str]]:
    """The labels the sample submission's prediction columns name: train columns (one label, or
    several 0/1 labels), or the classes of one train column (a submission of probabilities);
    None where they name neither (one column named otherwise than the train file's label)."""
    predicted = sample.predicted
    if all(c in cols for c in predicted):
        notes["label"] = f"{_shows(predicted)}: the sample submission's prediction column" + \
                         ("s" if len(predicted) > 1 else "")
        return predicted, "decisions"
    for key, col in cols.items():
        if not col.texty and set(predicted) == set(col.filled.unique()):
            notes["label"] = (f"{_show(key)}: the sample submission has one column per class of it "
                              f"({', '.join(predicted)}), so the submission holds probabilities")
            return [key], "probabilities"
    if len(predicted) > 1:
        raise PipelineError(f"the sample submission's prediction columns {', '.join(predicted)} are neither train "
                            "columns nor the classes of one: name the label column with --label")
    return None


def label_by_values(cols: dict, notes: dict) -> list[Column]:
    """The label when no sample names it: the one train column the test file lacks, or among the
    columns that could be a label, the one named like a label; several 0/1 columns are the labels
    of a multilabel task (a list)."""
    absent = [c for c, p in cols.items() if p.test is None and not p.texty]
    if len(absent) > 1 and all(cols[c].binary for c in absent):
        notes["label"] = f"{_shows(absent)}: the 0/1 columns the test file lacks"
        return absent
    if len(absent) == 1:
        notes["label"] = f"{_show(absent[0])}: the one train column the test file lacks"
        return absent
    candidates = absent or [c for c, p in cols.items() if _label_like(p)]
    named = [c for c in candidates if str(c).lower() in LABEL_NAMES]
    if len(candidates) == 1 or len(named) == 1:
        key = candidates[0] if len(candidates) == 1 else named[0]
        why = "the only column of few values that is no id or text" if len(candidates) == 1 else "named like a label"
        also = "; the test file has it too, so data.test_label scores the test predictions (never trained on)" \
            if cols[key].test is not None else ""
        notes["label"] = f"{_show(key)}: {why}{also}"
        return [key]
    if not candidates:
        raise PipelineError("no column looks like the label (every column is in the test file too and holds ids or "
                            "text): name it with --label COL")
    raise PipelineError(f"{len(candidates)} columns could be the label ({_shows(candidates)}): name it with "
                        "--label COL (several 0/1 columns: --label A,B,C)")


def _label_like(p: Profile) -> bool:
    """A column that could hold the label: filled in every row, no text, no id, few values or numbers."""
    return (len(p.filled) == len(p.train) and not p.texty and not p.idlike
            and (p.numeric or p.distinct <= MAX_INTEGER_CLASSES))


def choose_texts(cols: dict, header: bool, taken: list, hints: Hints, notes: dict) -> list[Column]:
    """One text column, or two that are named as the two sides of a pair (first side first)."""
    if hints.text is not None:
        keys = [key_of(k, header) for k in hints.text]
        if not 1 <= len(keys) <= 2 or any(k not in cols or cols[k].test is None for k in keys):
            raise PipelineError(f"--text: one or two columns that both files have (columns of both: "
                                f"{_shows([c for c in cols if cols[c].test is not None])})")
        notes["text"] = f"{_shows(keys)}, as --text says"
        return keys
    found = [c for c, p in cols.items() if c not in taken and p.test is not None and p.texty]
    if len(found) == 1:
        notes["text"] = f"{_show(found[0])}: the one column of both files that holds text"
        return found
    if len(found) == 2 and header and paired(*map(str, found)):
        first, second = paired(*map(str, found))
        notes["text"] = f"{_show(first)} + {_show(second)}: a pair (named as the two sides of one)"
        return [first, second]
    if not found:
        raise PipelineError("no column of both files holds text (several words a row): name it with --text COL")
    pick = ",".join(str(c) for c in found[:2])
    raise PipelineError(f"{len(found)} columns hold text ({_shows(found)}): name the text with --text {found[0]} "
                        f"(one text) or --text {pick} (a pair of texts)")


def paired(a: str, b: str) -> Optional[tuple[str, str]]:
    """(first side, second side) when two column names are the two sides of a pair, else None."""
    for first, second in PAIR_NAMES:
        if {a.lower(), b.lower()} == {first, second}:
            return (a, b) if a.lower() == first else (b, a)
    ta, tb = re.findall(r"\d+|[A-Za-z]+|[^\dA-Za-z]", a), re.findall(r"\d+|[A-Za-z]+|[^\dA-Za-z]", b)
    if len(ta) != len(tb):
        return None
    diff = [(x, y) for x, y in zip(ta, tb) if x != y]
    if len(diff) == 1 and set(diff[0]) in PAIR_MARKERS:
        return (a, b) if sorted(diff[0])[0] == diff[0][0] or diff[0][0] == "first" else (b, a)
    return None


def choose_task(labels: list[Profile], hints: Hints, notes: dict) -> str:
    """classification (classes), regression (numbers) or multilabel (several 0/1 columns)."""
    if hints.task is not None:
        get_task(hints.task)
        notes["task"] = f"{hints.task}, as --task says"
        return hints.task
    if len(labels) > 1:
        bad = [p.show() for p in labels if not p.binary]
        if bad:
            raise PipelineError(f"several label columns make a multilabel task, whose labels are 0/1, but "
                                f"{', '.join(bad)} holds other values: name one label with --label")
        notes["task"] = f"multilabel: {len(labels)} columns of 0/1"
        return "multilabel"
    (p,) = labels
    if p.fractional or (p.numeric and p.distinct > MAX_INTEGER_CLASSES):
        notes["task"] = f"regression: {p.show()} holds numbers ({p.distinct} distinct values, e.g. {p.filled.iloc[0]})"
        return "regression"
    return classes_note(p, notes)


def classes_note(p: Profile, notes: dict) -> str:
    """Classification, with the classes and their counts in the note."""
    if p.distinct < 2:
        raise PipelineError(f"the label {p.show()} holds one value only ({p.filled.iloc[0]!r}): nothing to learn")
    counts = p.filled.value_counts()
    shown = ", ".join(f"{c}: {counts[c]:,}" for c in class_order(list(counts.index))[:6])
    more = ", ..." if len(counts) > 6 else ""
    hint = ("; integer classes: if they are ordered grades, --task regression --metric qwk"
            if p.numeric and p.distinct > 2 else "")
    notes["task"] = f"classification: {p.distinct} classes in {p.show()} ({shown}{more}){hint}"
    return "classification"


def choose_metric(task: str, submit_values: str, hints: Hints, notes: dict) -> str:
    t = get_task(task)
    if hints.metric is not None:
        if hints.metric not in t.metrics:
            raise PipelineError(f"--metric {hints.metric}: task {task} accepts {', '.join(t.metrics)}")
        notes["metric"] = f"{hints.metric}, as --metric says"
        return hints.metric
    metric = "logloss" if submit_values == "probabilities" else t.default_metric
    why = "a submission of probabilities" if submit_values == "probabilities" else "the task's default"
    others = ", ".join(m for m in t.metrics if m != metric)
    notes["metric"] = f"{metric} ({why}; --metric to choose: {others})"
    return metric


def choose_k(task: str, labels: list[Profile], notes: dict) -> int:
    """K: 5, or fewer where the smallest class (multilabel: the rarer side of a label) has fewer rows."""
    if task == "regression":
        k = max(2, min(DEFAULT_FOLDS, len(labels[0].train) // 2))
        notes["folds"] = f"{k} folds"
        return k
    counts = [(p.show() + " " + v, int(n)) for p in labels for v, n in p.filled.value_counts().items()]
    where, smallest = min(counts, key=lambda x: x[1])
    if smallest < 2:
        raise PipelineError(f"{where} has {smallest} row: every class (every label's 0 and 1) needs 2 rows or more "
                            "for K-fold; drop or merge it")
    k = min(DEFAULT_FOLDS, smallest)
    smaller = f" (the smallest class, {where}, has {smallest} rows)" if k < DEFAULT_FOLDS else ""
    notes["folds"] = f"{k} folds{smaller}"
    return k


def choose_strategy(task: str, texts: list[pd.Series], k: int, notes: dict) -> str:
    """auto_group where the same sentence appears in several pairs (so no sentence is on both
    sides of a split), else stratified."""
    if len(texts) != 2 or not get_task(task).grouped_folds:
        return "stratified"
    a, b = ([normalise(t) for t in side] for side in texts)
    groups = pair_groups(a, b)
    sizes = np.bincount(groups)
    shared = int(sizes[sizes > 1].sum())
    if not shared:
        return "stratified"
    if len(sizes) < k:
        notes["folds"] += (f"; the pairs share sentences so widely that they form {len(sizes)} groups, fewer than "
                           "the folds: stratified, so some sentences are on both sides of a split")
        return "stratified"
    notes["folds"] += (f", grouped (auto_group): {shared:,} pairs share a sentence with another pair; such "
                       "pairs stay in one fold")
    return "auto_group"


def row_tokens(texts: list[Profile]) -> int:
    """A row's tokens over its texts, 95th percentile (about 1.3 word pieces a word)."""
    counts = sum(p.train.iloc[:TEXT_SAMPLE].map(lambda t: len(t.split()) + len(HAN.findall(t))).to_numpy()
                 for p in texts)
    return int(np.percentile(counts, 95) * 1.3) + 2 * len(texts) + 1


def empty_texts(cols: dict, texts: list[Column]) -> int:
    return int(sum((cols[c].train == "").sum() + (cols[c].test == "").sum() for c in texts))


def data_section(train: Path, test: Path, sample: Optional[Path], header: bool, encoding: str, id_col: Any,
                 id_where: str, texts: list, labels: list, cols: dict) -> dict:
    """The config's data section: the files relative to one folder, and the column keys."""
    folder = Path(_common_folder([train, test] + ([sample] if sample else [])))
    data: dict[str, Any] = {"dir": str(folder), "train": _inside(train, folder), "test": _inside(test, folder)}
    if not header:
        data["header"] = False
    if encoding != "utf-8":
        data["encoding"] = encoding
    data["test_id" if id_where == "test" else "id"] = id_col   # None: row numbers
    data["text_a"] = texts[0]
    if len(texts) == 2:
        data["text_b"] = texts[1]
    data["label"] = labels if len(labels) > 1 else labels[0]
    if all(cols[c].test is not None for c in labels):
        data["test_label"] = data["label"]
    if sample is not None:
        data["sample_submission"] = _inside(sample, folder)
    return data


def _common_folder(paths: list[Path]) -> str:
    return os.path.commonpath([str(p.resolve().parent) for p in paths])


def _inside(path: Path, folder: Path) -> str:
    return str(path.resolve().relative_to(folder))

