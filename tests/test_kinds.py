"""Every registered model kind, for every task type, through the one contract the driver relies on.

No code here names a kind: a kind added to registry.KINDS is checked by these tests as it is. Each
kind's params are its class's defaults with small sizes put in where the class has the field
(SMALL), so the whole file runs in seconds on tiny pair tables and a tiny random BERT.

The contract (pipeline/models/base.py, and how driver.fit_fold uses it): build(params, n_outputs,
view) -> fit(train, valid, ctx) -> predict_proba(split) (n, n_outputs) finite floats, probabilities
in [0, 1] for classification (rows summing to 1) and multilabel; save(dir) then Kind.load(dir, ...)
predicts the same; the same seed fits the same predictions; the fingerprint (config.model_identity)
changes with every param. A kind may refuse a task or a table shape it cannot fit (pair features
need pairs), but only with one line of PipelineError, never a crash; every kind fits the base case,
binary classification of pairs.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import pytest

from conftest import WORDS, tiny_bert, tiny_pairs
from pipeline import tasks
from pipeline.config import ModelConfig, config_hash, model_identity, model_params
from pipeline.data import Split, Table, whole
from pipeline.errors import PipelineError
from pipeline.models import registry
from pipeline.models.base import FitContext

KINDS = sorted(registry.KINDS)
VIEW = "lower"
N_TRAIN, N_TEST = 40, 12
TINY_BERT = "<tiny bert>"   # SMALL's placeholder for the tiny BERT's folder (a fixture, made once)
# field -> small value, applied to every params class that has the field; the thread counts keep
# the run to one core each, fp32 makes it the same on every CPU
SMALL: dict[str, Any] = {"backbone": TINY_BERT, "embed": TINY_BERT, "max_length": 16, "epochs": 1,
                         "n_estimators": 10, "min_df": 1, "batch_size": 8, "n_jobs": 1, "num_threads": 1,
                         "precision": "fp32"}


@dataclass(frozen=True)
class TaskCase:
    """A task type, its number of outputs and its labels made from tiny_pairs' 0/1 labels."""
    id: str
    task: str
    n_outputs: int
    labels: Callable[[np.ndarray], np.ndarray]   # (n,) 0/1 pair labels -> the task's y

    @property
    def obj(self) -> tasks.Task:
        return tasks.get(self.task)


TASKS = [
    TaskCase("binary", "classification", 2, lambda y: y.astype(np.int64)),
    TaskCase("3-class", "classification", 3, lambda y: np.where(np.arange(len(y)) % 3 == 2, 2, y).astype(np.int64)),
    TaskCase("regression", "regression", 1, lambda y: (3.0 * y + 0.25 * (np.arange(len(y)) % 5)).astype(np.float64)),
    TaskCase("multilabel", "multilabel", 3,
             lambda y: np.stack([y, np.arange(len(y)) // 4 % 2, np.arange(len(y)) % 3 == 0], axis=1).astype(np.int64)),
]
BASE_CASE = TASKS[0]


# ----------------------------------------------------------------------------- data and params


def table(name: str, case: TaskCase, n: int, seed: int, pair: bool = True, labelled: bool = True) -> Table:
    """conftest.tiny_pairs as a prepared Table (raw, lower and lemma views), labels of `case`; pair=False
    keeps text_a alone."""
    df = tiny_pairs(n, seed)
    a, b = list(df.text_a), list(df.text_b)
    views = {"raw": (a, b if pair else None), "lower": ([t.lower() for t in a], [t.lower() for t in b] if pair else None)}
    views["lemma"] = views["lower"]
    y = case.labels(df.label.to_numpy()) if labelled else None
    return Table(name, list(df.id), views, y)


def data(case: TaskCase, pair: bool = True) -> tuple[Split, Split, Split]:
    """(train, valid, test): rows 0, 1, 4, 5, ... and 2, 3, 6, 7, ... of one labelled table (tiny_pairs
    alternates its labels), and an unlabelled test table."""
    t = table("train", case, N_TRAIN, 0, pair)
    rows = np.arange(N_TRAIN)
    tr, va = rows[rows // 2 % 2 == 0], rows[rows // 2 % 2 == 1]
    test = whole(table("test", case, N_TEST, 1, pair, labelled=False))
    return Split([(t, tr)], t.y[tr], "train"), Split([(t, va)], t.y[va], "valid"), test


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return str(tiny_bert(tmp_path_factory.mktemp("bert"), WORDS + list(".,!?")))


def small_params(kind: str, bert: str) -> Any:
    """The kind's params class defaults, with SMALL applied to the fields it has."""
    cls = registry.kind(kind).params
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (bert if v == TINY_BERT else v) for k, v in SMALL.items() if k in names})


def context(case: TaskCase, seed: int, tmp: Path) -> FitContext:
    """As driver.fit_fold makes it: the task's own metric for early stopping, a fresh cache."""
    task, metric = case.obj, case.obj.default_metric
    return FitContext(n_classes=case.n_outputs, seed=seed, fold=0, out_dir=tmp,
                      score=lambda y, p: task.score(metric, y, p), cache={}, progress=False,
                      label="kinds fold 1/2", task=task, metric=metric)


def fit(kind: str, params: Any, case: TaskCase, train: Split, valid: Split, seed: int, tmp: Path):
    model = registry.kind(kind).build(params, case.n_outputs, VIEW)
    return model.fit(train, valid, context(case, seed, tmp))


def fitted_or_refused(kind: str, params: Any, case: TaskCase, train: Split, valid: Split, seed: int,
                      tmp: Path) -> Optional[Any]:
    """The fitted model, or None when the kind refused (a one-line PipelineError, checked here)."""
    try:
        return fit(kind, params, case, train, valid, seed, tmp)
    except PipelineError as e:
        assert str(e) and "\n" not in str(e), f"{kind} refused {case.id} with more than one line: {e}"
        return None


def check_predictions(p: np.ndarray, n: int, case: TaskCase, what: str) -> None:
    assert isinstance(p, np.ndarray) and p.shape == (n, case.n_outputs), f"{what}: shape {getattr(p, 'shape', p)}"
    assert np.issubdtype(p.dtype, np.floating), f"{what}: dtype {p.dtype}"
    assert np.isfinite(p).all(), f"{what}: non-finite predictions"
    if case.task in ("classification", "multilabel"):
        assert (p >= 0).all() and (p <= 1).all(), f"{what}: probabilities outside [0, 1]"
    if case.task == "classification":
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5, err_msg=f"{what}: rows do not sum to 1")


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("case", TASKS, ids=[c.id for c in TASKS])
@pytest.mark.parametrize("kind", KINDS)
def test_kind_fits_predicts_saves_and_reloads(kind, case, bert, tmp_path):
    params = small_params(kind, bert)
    train, valid, test = data(case)
    model = fitted_or_refused(kind, params, case, train, valid, 3, tmp_path / "a")
    if model is None:
        return
    preds = {"valid": model.predict_proba(valid), "test": model.predict_proba(test)}
    for name, split in (("valid", valid), ("test", test)):
        check_predictions(preds[name], len(split), case, f"{kind} {case.id} {name}")
    assert isinstance(getattr(model, "info_", None), dict)

    saved = model.save(tmp_path / "saved")
    assert saved and all(Path(f).is_file() and Path(f).parent == tmp_path / "saved" for f in saved)
    loaded = registry.kind(kind).load(tmp_path / "saved", params, case.n_outputs, VIEW, case.obj)
    for name, split in (("valid", valid), ("test", test)):
        np.testing.assert_allclose(loaded.predict_proba(split), preds[name], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{kind} {case.id}: the reloaded model predicts {name} otherwise")

    again = fit(kind, params, case, train, valid, 3, tmp_path / "b")
    np.testing.assert_array_equal(again.predict_proba(valid), preds["valid"],
                                  err_msg=f"{kind} {case.id}: the same seed fitted other predictions")


@pytest.mark.parametrize("kind", KINDS)
def test_kind_fits_the_base_case(kind, bert, tmp_path):
    """A kind may refuse what it cannot fit; binary classification of pairs it must fit."""
    train, valid, _ = data(BASE_CASE)
    model = fit(kind, small_params(kind, bert), BASE_CASE, train, valid, 0, tmp_path)
    check_predictions(model.predict_proba(valid), len(valid), BASE_CASE, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_single_texts_fit_or_are_refused_in_one_line(kind, bert, tmp_path):
    train, valid, test = data(BASE_CASE, pair=False)
    model = fitted_or_refused(kind, small_params(kind, bert), BASE_CASE, train, valid, 0, tmp_path)
    if model is not None:
        check_predictions(model.predict_proba(test), len(test), BASE_CASE, f"{kind} single texts")


# ----------------------------------------------------------------------------- the fingerprint


def changed(value: Any, hint: Any) -> list[Any]:
    """Other values of a field (its type hint `hint`) to try; the first the params class accepts is used."""
    literal = [a for a in (typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,))
               if typing.get_origin(a) is Literal]
    if literal:
        return [v for v in typing.get_args(literal[0]) if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value / 2, value * 2, value + 1]
    if isinstance(value, list):
        return [[v + 1 for v in value], value[:-1], []]
    if isinstance(value, str):
        return [value + "-other"]
    return [1, 0.5, "other", True]   # None: what the field may hold instead


@pytest.mark.parametrize("kind", KINDS)
def test_every_param_changes_the_fingerprint(kind, bert):
    """The model's identity hash (what its fold outputs are reused by) differs for a change of any
    param; the params written into a model config read back as the same params."""
    params = small_params(kind, bert)
    model = ModelConfig(name="m", kind=kind, view=VIEW, params=dataclasses.asdict(params))
    assert model_params(model) == params
    base = config_hash(model_identity(model))
    tried, hints = [], typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):
        for value in changed(getattr(params, f.name), hints[f.name]):
            try:
                other = dataclasses.replace(params, **{f.name: value})
            except (PipelineError, TypeError, ValueError):
                continue
            if getattr(other, f.name) == getattr(params, f.name):
                continue
            tried.append(f.name)
            moved = dataclasses.replace(model, params={**model.params, f.name: getattr(other, f.name)})
            assert config_hash(model_identity(moved)) != base, f"{kind}: params.{f.name} left the fingerprint as it was"
            break
    assert tried, f"{kind}: no param could be changed"


def test_every_kind_says_how_it_is_scheduled():
    """What the driver and executor read of a kind instead of branching on its name."""
    for name in KINDS:
        k = registry.kind(name)
        assert k.expected_seconds > 0 and k.accelerator in registry.ACCELERATORS, name
