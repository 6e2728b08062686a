"""What differs between task types, in one place: classification, regression, multilabel.

A Task owns label reading and encoding, the fold splitter, the number and meaning of the output
columns, the scores and accepted metrics, the classical estimators, the transformer's loss and
output activation, the ensemble's methods and decision rules (thresholds, cut-points), the
pseudo-label agreement rule, the report's diagnostics and the submission's columns. The driver and
the stages call the task object of `cfg.task` (`get`) and never branch on the type themselves.

Shapes: a prediction matrix is float (n, n_outputs) for every task: class probabilities (C
columns), a predicted value (1 column) or label probabilities (L columns). Labels `y`:
classification (n,) int64 class indices; regression (n,) float64; multilabel (n, L) int64 0/1.
`columns` are the names of the output columns: class names, the target's name, label names.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

import numpy as np

from . import metrics as M
from .combiners import (BCEBlender, BestSingle, Blender, HillClimber, LabelRankAverager, LabelStacker, LabelVoter,
                        MedianVoter, MSEBlender, RankAverager, RidgeStacker, Stacker, ValueRankAverager, Voter)
from .data import class_order, encode_labels
from .errors import PipelineError
from .formatting import format_table
from .plots import plot_matrix, plot_residuals, plot_scatter

FLOAT_CLASSES_LIMIT = 20   # more distinct non-integer numeric labels than this: not classes
# Regression targets: |y| at most this. Values, predictions and their errors must fit the float32
# matrices with room to spare (float32 overflows past 3.4e38); no real target comes near.
MAX_TARGET = 1e30
# A label that is a number, as a CSV user writes one: ASCII digits, optional sign, point and
# exponent. Python's float() also takes "1_000", "٣" (an Arabic-Indic digit) and " 1 ", which no
# one means as a target; nan and inf are no targets either.
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _as_list(col: Any) -> list:
    return list(col) if isinstance(col, list) else [col]


def column_name(col: Any, fallback: str) -> str:
    """A column's name for outputs: its header name, or `fallback` + position for a positional key."""
    return col if isinstance(col, str) else f"{fallback}{col}"


class Task:
    """Single-label classification (the base: every other task overrides what differs)."""

    name = "classification"
    outputs = "class probabilities"
    metrics: tuple[str, ...] = ("accuracy", "f1", "macro_f1", "logloss", "mcc", "roc_auc")
    decision_metrics: tuple[str, ...] = ("accuracy", "f1", "macro_f1", "mcc")  # a threshold can move these
    default_metric = "accuracy"
    label_kind = "a class index"   # what one prepared label is, for error lines
    table_keys: tuple[str, ...] = ("accuracy", "f1", "logloss")   # columns of every scores table
    loss_metric = "logloss"   # the score of the task's training loss (early_stop: loss)
    soft_labels = True        # pseudo.soft: a pseudo row once per class, weighted by its probability
    grouped_folds = True      # folds.strategy group / auto_group: stratified folds that keep groups whole
    score_note = ("Scores of the probability matrices at argmax (f1: binary F1 of the second class, macro-F1 "
                  "for more classes).")

    # -- config

    def check_config(self, cfg: Any) -> None:
        """Config errors that depend on the task: the metric, the label columns, the fold strategy."""
        if cfg.metric not in self.metrics:
            raise PipelineError(f"config: metric={cfg.metric!r} is not a {self.name} metric "
                                f"(task: {self.name} accepts {', '.join(self.metrics)})")
        if cfg.pseudo.soft and not self.soft_labels:
            raise PipelineError(f"config: pseudo.soft=true needs task: classification (task: {self.name} "
                                "has no class probabilities to weight pseudo rows by)")
        self.check_layout(cfg)

    def check_layout(self, cfg: Any) -> None:
        """One label column (data.label, data.test_label); any fold strategy."""
        for key in ("label", "test_label"):
            if isinstance(getattr(cfg.data, key), list):
                raise PipelineError(f"config: data.{key} is a list of columns, which needs task: multilabel")

    def table(self, metric: str) -> list[str]:
        """The score keys a log line shows: the metric first, then the task's usual ones."""
        return [metric] + [k for k in self.table_keys if k != metric]

    # -- labels

    def columns(self, labels: list, label_key: Any, path: str) -> list[str]:
        """Output column names from the train labels: the sorted class names (numerically when
        every label is an integer). A numeric column with many distinct non-integer values is
        refused: it is a regression target read as classes."""
        classes = class_order(labels)
        fractional = [c for c in classes if _fractional(c)]
        if len(fractional) > FLOAT_CLASSES_LIMIT and all(_number(c) is not None for c in classes):
            raise PipelineError(f"{path}: column {label_key!r} holds {len(fractional)} distinct non-integer numbers "
                                f"(e.g. {fractional[0]!r}); it looks like a regression target: set task: regression")
        if len(classes) < 2:
            raise PipelineError(f"{path}: only one class ({classes[0]!r}) in column {label_key!r}")
        return classes

    def encode(self, labels: list, columns: list[str], path: str, label_key: Any) -> np.ndarray:
        return encode_labels(labels, columns, path)

    def check_labels(self, y: np.ndarray, metric: str, path: str) -> None:
        """Refuse train labels that the metric cannot score (classification: any)."""

    def invalid_rows(self, y: np.ndarray, n_outputs: int) -> np.ndarray:
        """Rows of prepared labels `y` that do not fit matrices of n_outputs columns."""
        if y.ndim != 1 or y.dtype.kind not in "iu":
            return np.arange(len(y))
        return np.flatnonzero((y < 0) | (y >= n_outputs))

    def label_strings(self, y: np.ndarray) -> list[str]:
        """One string per row, for the labels' hash in folds.json."""
        return [str(v) for v in y]

    # -- folds

    def assign_folds(self, y: np.ndarray, k: int, seed: int, groups: Optional[np.ndarray],
                     columns: list[str]) -> np.ndarray:
        """(n,) fold of every row: stratified by class, grouped when `groups` is given."""
        _check_k(np.bincount(y), k, columns, "class")
        return _stratified(y, k, seed, groups)

    # -- scores

    def scores(self, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        return M.scores(y, pred)

    def score(self, metric: str, y: np.ndarray, pred: np.ndarray) -> float:
        """`metric` of `pred`, higher is better (early stopping, `best`)."""
        return M.signed(metric, self.scores(y, pred)[metric])

    def loss_score(self, y: np.ndarray, pred: np.ndarray) -> float:
        """The task's loss on these rows, negated (higher is better): log loss (classification,
        multilabel: the mean binary one), RMSE (regression: the same order as MSE)."""
        return self.score(self.loss_metric, y, pred)

    def tuned_score(self, metric: str, y: np.ndarray, pred: np.ndarray) -> float:
        """`metric` at the decisions tuned on these very rows (Task.tune: a binary threshold, label
        thresholds, qwk cut-points), higher is better; the plain score where nothing is tuned."""
        tuned = self.tune(metric, y, pred)
        if tuned is None:
            return self.score(metric, y, pred)
        return M.signed(metric, self.decision_scores(y, self.decide(pred, tuned), pred)[metric])

    # -- classical models

    def linear(self, p: Any, seed: int):
        """p: params with C, max_iter, class_weight."""
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=p.C, max_iter=p.max_iter, class_weight=p.class_weight, random_state=seed)

    def booster(self, p: Any, seed: int, bins: Optional[list[int]] = None):
        """p: LGBMParams; bins: each column's max_bin (None: p.max_bin for every column)."""
        import lightgbm

        return lightgbm.LGBMClassifier(**_lgbm_kwargs(p, seed, bins))

    def predict(self, est: Any, X: Any, n_outputs: int) -> np.ndarray:
        """(n, C) probabilities; columns follow class index even if a class was unseen."""
        p = est.predict_proba(X)
        out = np.zeros((X.shape[0], n_outputs), dtype=np.float64)
        out[:, np.asarray(est.classes_, dtype=np.int64)] = p
        return out

    # -- transformer

    def target_stats(self, y: np.ndarray) -> tuple[float, float]:
        """(shift, scale) the transformer learns targets in: (y - shift) / scale; identity here."""
        return 0.0, 1.0

    def targets(self, y: np.ndarray, n_outputs: int, stats: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
        y = np.asarray(y, dtype=np.int64)
        if len(y) and (y.min() < 0 or y.max() >= n_outputs):
            raise PipelineError(f"transformer: labels must be in 0..{n_outputs - 1}, got {y.min()}..{y.max()}")
        return y

    def loss(self, logits, y, w):
        """logits (B, C) float32, y (B,) int64, w (B,) -> the weighted SUM of cross-entropies."""
        import torch.nn.functional as F

        return (F.cross_entropy(logits, y, reduction="none") * w).sum()

    def consistency(self, a, b, w):
        """Two outputs (B, C) float32 of the same rows under different dropout, w (B,) -> the
        weighted SUM of their disagreement (R-Drop): the symmetric KL divergence of the softmaxes."""
        import torch.nn.functional as F

        la, lb = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
        kl = (la.exp() * (la - lb)).sum(-1) + (lb.exp() * (lb - la)).sum(-1)
        return (0.5 * kl * w).sum()

    def activate(self, logits, stats: tuple[float, float] = (0.0, 1.0)):
        import torch

        return torch.softmax(logits, dim=-1)

    # -- ensemble

    # the ensemble's estimators (pipeline/combiners.py)
    stacker, blender, voter, ranker = Stacker, Blender, Voter, RankAverager

    def method(self, name: str, C: float, seed: int, metric: str, select: Optional[dict] = None) -> Callable[[], Any]:
        """A factory of the estimator that ensemble method `name` means for this task; `select`:
        HillClimber's init, steps, bags and fraction (its defaults where None)."""
        return {"stack": lambda: self.stacker(C, seed), "blend": self.blender, "vote": self.voter,
                "best": lambda: BestSingle(lambda y, p: self.score(metric, y, p)),
                "select": lambda: HillClimber(self.selection_score(metric), seed=seed, **(select or {})),
                "rank": self.ranker}[name]

    def selection_score(self, metric: str) -> Callable[[np.ndarray, np.ndarray], float]:
        """What hill-climbing selection maximises, higher is better: roc_auc itself, else log loss
        (for logloss, and as the smooth proxy of accuracy, F1 and MCC: those are step functions of
        the weights, flat over most single additions, so a greedy climb on them picks by ties and
        noise, and the submitted decisions come from a threshold tuned afterwards anyway)."""
        if metric == "roc_auc":
            return M.class_auc
        return lambda y, p: -M.class_logloss(y, p)

    def tune(self, metric: str, y: np.ndarray, pred: np.ndarray) -> Any:
        """Binary tasks: the class-1 threshold maximising a decision metric; None otherwise."""
        if pred.shape[1] != 2 or metric not in self.decision_metrics:
            return None
        return M.tune_threshold(metric, y, pred)

    def decide(self, pred: np.ndarray, tuned: Any = None) -> np.ndarray:
        """(n, C) probabilities -> (n,) class indices (at the tuned threshold, if any)."""
        return M.decide(pred, tuned)

    def decision_scores(self, y: np.ndarray, decisions: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        """Scores of decisions; the probability metrics (log loss, AUC) from `pred`."""
        probabilistic = self.scores(y, pred)
        return {**self.scores(y, np.eye(pred.shape[1])[decisions]), "logloss": probabilistic["logloss"],
                "roc_auc": probabilistic["roc_auc"]}

    def describe(self, tuned: Any) -> str:
        return f" t={tuned:.2f}"

    def submission(self, decisions: np.ndarray, columns: list[str], label_col: str) -> dict[str, list]:
        """The submission's label columns: the class name of each row."""
        return {label_col: [columns[i] for i in decisions]}

    def probability_columns(self, pred: np.ndarray, columns: list[str], label_col: str) -> dict[str, list]:
        """The submission's columns under ensemble.submit_values=probabilities: pred (n, C), one
        column per output, named by it (class or label names)."""
        return {c: pred[:, j].tolist() for j, c in enumerate(columns)}

    def served_outputs(self, pred: np.ndarray, columns: list[str]) -> list[dict]:
        """What serving answers per row beside the label: pred (n, C) -> {"probabilities": {class or
        label name: probability}} per row."""
        return [{"probabilities": {c: float(v) for c, v in zip(columns, row)}} for row in pred]

    # -- pseudo labels

    def vote(self, probas: np.ndarray, train_y: np.ndarray, tolerance: float):
        """The teachers' label for every test row; see `class_vote`."""
        return class_vote(probas)

    def group(self, labels: np.ndarray) -> np.ndarray:
        """(n,) int group of each label, for the per-group quotas of keep_class_balance: its class."""
        return np.asarray(labels, dtype=np.int64)

    def group_names(self, columns: list[str]) -> list[str]:
        """Names of the balance groups (classes)."""
        return list(columns)

    def n_groups(self, n_outputs: int) -> int:
        return n_outputs

    def label_text(self, label: Any, columns: list[str]) -> str:
        return columns[int(label)]

    def agreement(self, labels: np.ndarray, truth: np.ndarray, train_y: np.ndarray) -> float:
        """Share of pseudo labels equal to the true ones (a diagnostic only)."""
        return float(np.mean(np.asarray(labels) == np.asarray(truth)))

    # -- report

    def calibration(self, pred: np.ndarray, y: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray, str]]:
        """(probability, hit, what) for a reliability curve: binary P(class 1) against class 1,
        else the top class's probability against being right."""
        if pred.shape[1] == 2:
            return pred[:, 1], (y == 1), "class 1"
        return pred.max(axis=1), pred.argmax(axis=1) == y, "top class"

    def diagnostics(self, y: np.ndarray, pred: np.ndarray, columns: list[str]) -> dict:
        """JSON-able numbers of the submitted method's OOF predictions: the confusion matrix."""
        C = len(columns)
        conf = np.bincount(y * C + pred.argmax(axis=1), minlength=C * C).reshape(C, C)
        return {"confusion": conf.tolist()}

    def diagnostics_section(self, diag: dict, method: str, columns: list[str]) -> str:
        rows = [[f"true {c}", *diag["confusion"][i]] for i, c in enumerate(columns)]
        return (f"## Ensemble: {method}\n\nConfusion matrix of the ensemble's honest OOF probabilities "
                "(ensembles/" + method + "/oof.npy) at argmax against the train labels; the submission may use "
                "a tuned threshold (see the ensemble stage's summary.json).\n\n"
                + format_table(["", *[f"pred {c}" for c in columns]], rows, markdown=True)
                + "\n\n![confusion matrix](confusion.png)")

    def draw_diagnostics(self, commit, out, diag: dict, method: str, columns: list[str], y, pred) -> list:
        return [plot_matrix(commit, out / "confusion.png", np.array(diag["confusion"]), columns, columns,
                            f"{method}: OOF confusion", "d", "Blues", xlabel="predicted", ylabel="true")]


class _OneGroup:
    """Pseudo labels of regression and multilabel tasks have no classes to balance: one group; and
    none to spread a soft label over (pseudo.soft is refused)."""

    soft_labels = False

    def group(self, labels: np.ndarray) -> np.ndarray:
        return np.zeros(len(labels), dtype=np.int64)

    def group_names(self, columns: list[str]) -> list[str]:
        return ["all"]

    def n_groups(self, n_outputs: int) -> int:
        return 1


class RegressionTask(_OneGroup, Task):
    """One numeric target; the model predicts its value."""

    name = "regression"
    loss_metric = "rmse"
    outputs = "predicted value"
    metrics = ("rmse", "mae", "pearson", "spearman", "qwk")
    decision_metrics = ("qwk",)
    default_metric = "rmse"
    label_kind = "a value"
    table_keys = ("rmse", "mae", "pearson", "spearman")
    score_note = "Scores of the predicted values (qwk, for integer targets: predictions rounded into the targets' range)."

    def columns(self, labels: list, label_key: Any, path: str) -> list[str]:
        """The target's name: its header name, "label" for a positional column (as the submission)."""
        return [label_key if isinstance(label_key, str) else "label"]

    def encode(self, labels: list, columns: list[str], path: str, label_key: Any) -> np.ndarray:
        """(n,) float64 targets: plain ASCII numbers (PLAIN_NUMBER) within +-MAX_TARGET, else one
        line naming the row, the value and the rule."""
        out = np.empty(len(labels), dtype=np.float64)
        for i, v in enumerate(labels):
            if not (isinstance(v, str) and PLAIN_NUMBER.fullmatch(v)):
                raise PipelineError(f"{path} row {i + 1}: label {_short(v)} in column {label_key!r} is not a number "
                                    "(task: regression takes plain decimal numbers such as 3, -1.5 or 2e3)")
            x = float(v)
            if not abs(x) <= MAX_TARGET:  # 1e400 reads as inf
                raise PipelineError(f"{path} row {i + 1}: label {_short(v)} in column {label_key!r} is beyond the "
                                    f"bound of +-{MAX_TARGET:g} for regression targets (rescale the column)")
            out[i] = x
        return out

    def check_labels(self, y: np.ndarray, metric: str, path: str) -> None:
        """qwk: integer targets spanning at most M.QWK_MAX_RATINGS ratings; any metric: not constant."""
        if metric == "qwk" and not M.is_integral(y):
            raise PipelineError(f"{path}: metric qwk needs integer targets, the label column holds non-integers "
                                "(use rmse, mae, pearson or spearman)")
        if metric == "qwk" and not M.is_ratings(y):
            raise PipelineError(f"{path}: metric qwk needs at most {M.QWK_MAX_RATINGS} ratings from the lowest "
                                f"target to the highest, the targets span {y.min():.0f}..{y.max():.0f} "
                                "(use rmse, mae, pearson or spearman)")
        if len(y) and np.ptp(y) == 0:
            raise PipelineError(f"{path}: every label is {y[0]}: nothing to learn")

    def invalid_rows(self, y, n_outputs):
        if y.ndim != 1:
            return np.arange(len(y))
        y = y.astype(np.float64)
        return np.flatnonzero(~np.isfinite(y) | (np.abs(y) > MAX_TARGET))

    def label_strings(self, y: np.ndarray) -> list[str]:
        return [repr(float(v)) for v in y]

    def assign_folds(self, y, k, seed, groups, columns):
        """Stratified on quantile bins of the target: every fold spans the target's range."""
        if k > len(y):
            raise PipelineError(f"folds.n_splits={k} is larger than the number of train rows ({len(y)})")
        return _stratified(quantile_bins(y, k), k, seed, groups)

    def scores(self, y, pred):
        return M.regression_scores(y, pred)

    def linear(self, p, seed):
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0 / p.C, random_state=seed)

    def booster(self, p, seed, bins=None):
        import lightgbm

        return lightgbm.LGBMRegressor(**_lgbm_kwargs(p, seed, bins))

    def predict(self, est, X, n_outputs):
        return np.asarray(est.predict(X), dtype=np.float64).reshape(-1, 1)

    def target_stats(self, y):
        """The train targets' mean and std: the head learns standardised targets, so one learning
        rate suits scores of 0-5 and prices in thousands alike."""
        return float(np.mean(y)), float(np.std(y)) or 1.0

    def targets(self, y, n_outputs, stats=(0.0, 1.0)):
        return ((np.asarray(y, dtype=np.float64) - stats[0]) / stats[1]).astype(np.float32)

    def loss(self, logits, y, w):
        """Weighted SUM of squared errors of (B, 1) predictions (in standardised units)."""
        return (((logits[:, 0] - y) ** 2) * w).sum()

    def consistency(self, a, b, w):
        """The weighted SUM of squared differences of two (B, 1) predictions."""
        return (((a[:, 0] - b[:, 0]) ** 2) * w).sum()

    def activate(self, logits, stats=(0.0, 1.0)):
        return logits * stats[1] + stats[0]

    stacker, blender, voter, ranker = RidgeStacker, MSEBlender, MedianVoter, ValueRankAverager

    def selection_score(self, metric):
        """`metric` itself; for qwk (a step function of the values, cut-points tuned afterwards) rmse."""
        proxy = "rmse" if metric in self.decision_metrics else metric
        return lambda y, p: self.score(proxy, y, p)

    def tune(self, metric, y, pred):
        """metric qwk: cut-points that turn predicted values into ratings, fitted on these rows."""
        if metric != "qwk":
            return None
        return {"lowest": int(y.min()), "highest": int(y.max()), "cuts": M.fit_cuts(y, pred[:, 0])}

    def decide(self, pred, tuned=None):
        """(n, 1) values -> (n,) values, or ratings at the tuned cut-points."""
        if tuned is None:
            return pred[:, 0].astype(np.float64)
        return M.cut(pred[:, 0], tuned["cuts"], tuned["lowest"], tuned["highest"])

    def decision_scores(self, y, decisions, pred):
        return {**self.scores(y, pred), "qwk": M.qwk(y, decisions)}

    def describe(self, tuned):
        return " cuts=" + "/".join(f"{c:.2f}" for c in tuned["cuts"])

    def submission(self, decisions, columns, label_col):
        return {label_col: decisions.tolist()}

    def probability_columns(self, pred, columns, label_col):
        return {label_col: pred[:, 0].tolist()}  # the raw predicted value, no cut-points

    def served_outputs(self, pred, columns):
        """{"value": the predicted value (before any cut-points)} per row."""
        return [{"value": float(row[0])} for row in pred]

    def vote(self, probas, train_y, tolerance):
        return value_vote(probas, train_y, tolerance)

    def label_text(self, label, columns):
        return repr(round(float(label), 6))

    def agreement(self, labels, truth, train_y):
        """Share of pseudo values within 0.5 standard deviations of the train target of the truth."""
        return float(np.mean(np.abs(np.asarray(labels) - truth) <= 0.5 * np.std(train_y)))

    def calibration(self, pred, y):
        return None

    def diagnostics(self, y, pred, columns):
        p = pred[:, 0]
        return {"residual_mean": float(np.mean(p - y)), "residual_std": float(np.std(p - y)),
                "target_range": [float(y.min()), float(y.max())],
                "prediction_range": [float(p.min()), float(p.max())]}

    def diagnostics_section(self, diag, method, columns):
        rows = [["residual mean (pred - true)", diag["residual_mean"]], ["residual std", diag["residual_std"]],
                ["target range", " .. ".join(f"{v:.4g}" for v in diag["target_range"])],
                ["prediction range", " .. ".join(f"{v:.4g}" for v in diag["prediction_range"])]]
        return (f"## Ensemble: {method}\n\nThe ensemble's honest OOF predictions (ensembles/{method}/oof.npy) "
                "against the train targets.\n\n" + format_table(["", "value"], rows, markdown=True)
                + "\n\n![predicted vs true](scatter.png)\n\n![residuals](residuals.png)")

    def draw_diagnostics(self, commit, out, diag, method, columns, y, pred):
        return [plot_scatter(commit, out / "scatter.png", y, pred[:, 0], f"{method}: OOF predicted vs true"),
                plot_residuals(commit, out / "residuals.png", y, pred[:, 0], f"{method}: OOF residuals")]


class MultilabelTask(_OneGroup, Task):
    """Several 0/1 label columns; the model predicts each label's probability."""

    name = "multilabel"
    outputs = "label probabilities"
    metrics = ("roc_auc", "logloss", "f1", "macro_f1", "accuracy", "mcc")
    default_metric = "roc_auc"
    grouped_folds = False     # iterative stratification has no grouped form
    label_kind = "a 0/1 list"
    table_keys = ("roc_auc", "f1", "logloss")
    score_note = ("Scores of the label probabilities (roc_auc: mean per-label AUC; f1: micro-F1 of every label "
                  "decision at 0.5; logloss: mean binary log loss).")

    def check_layout(self, cfg):
        """A list of label columns; stratified folds only."""
        if not isinstance(cfg.data.label, list) or len(cfg.data.label) < 2:
            raise PipelineError("config: task multilabel needs data.label to be a list of two or more 0/1 "
                                "columns (e.g. data.label: [toxic, insult])")
        if cfg.folds.strategy != "stratified" and not self.grouped_folds:
            raise PipelineError(f"config: folds.strategy={cfg.folds.strategy} is not available for task "
                                "multilabel (iterative stratification over the labels; use stratified)")

    def columns(self, labels, label_key, path):
        names = [column_name(c, "label") for c in _as_list(label_key)]
        if len(set(names)) != len(names):
            raise PipelineError(f"config: data.label names a column twice: {names}")
        return names

    def encode(self, labels, columns, path, label_key):
        out = np.zeros((len(labels), len(columns)), dtype=np.int64)
        for i, row in enumerate(labels):
            for j, v in enumerate(row):
                x = _number(v)
                if x not in (0.0, 1.0):
                    raise PipelineError(f"{path} row {i + 1}: label {v!r} in column {columns[j]!r} is not 0 or 1 "
                                        "(task: multilabel)")
                out[i, j] = int(x)
        return out




    def invalid_rows(self, y, n_outputs):
        if y.ndim != 2 or y.shape[1] != n_outputs:
            return np.arange(len(y))
        return np.flatnonzero(((y != 0) & (y != 1)).any(axis=1))

    def label_strings(self, y):
        return ["".join(map(str, row)) for row in y]

    def assign_folds(self, y, k, seed, groups, columns):
        """Iterative stratification (Sechidis et al.): every fold keeps each label's share."""
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        if k > len(y):
            raise PipelineError(f"folds.n_splits={k} is larger than the number of train rows ({len(y)})")
        fold = np.full(len(y), -1, dtype=np.int64)
        splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for f, (_, val) in enumerate(splitter.split(np.zeros(len(y)), y)):
            fold[val] = f
        return fold

    def scores(self, y, pred):
        return M.multilabel_scores(y, pred)

    def linear(self, p, seed):
        return PerLabel(lambda: Task.linear(self, p, seed))

    def booster(self, p, seed, bins=None):
        return PerLabel(lambda: Task.booster(self, p, seed, bins))

    def predict(self, est, X, n_outputs):
        return est.predict_proba(X)

    def targets(self, y, n_outputs, stats=(0.0, 1.0)):
        return np.asarray(y, dtype=np.float32)

    def loss(self, logits, y, w):
        """Weighted SUM over rows of the mean binary cross-entropy over labels."""
        import torch.nn.functional as F

        return (F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=1) * w).sum()

    def consistency(self, a, b, w):
        """The weighted SUM over rows of the mean over labels of the symmetric Bernoulli KL."""
        import torch
        import torch.nn.functional as F

        pa, pb = torch.sigmoid(a), torch.sigmoid(b)
        la, lb, na, nb = F.logsigmoid(a), F.logsigmoid(b), F.logsigmoid(-a), F.logsigmoid(-b)
        kl = pa * (la - lb) + (1 - pa) * (na - nb) + pb * (lb - la) + (1 - pb) * (nb - na)
        return (0.5 * kl.mean(dim=1) * w).sum()

    def activate(self, logits, stats=(0.0, 1.0)):
        import torch

        return torch.sigmoid(logits)

    stacker, blender, voter, ranker = LabelStacker, BCEBlender, LabelVoter, LabelRankAverager

    def selection_score(self, metric):
        """Mean per-label roc_auc itself, else the mean binary log loss (see Task.selection_score)."""
        if metric == "roc_auc":
            return M.label_auc
        return lambda y, p: -M.label_logloss(y, p)

    def tune(self, metric, y, pred):
        """Per-label thresholds for a decision metric; None for roc_auc and logloss."""
        return M.label_thresholds(metric, y, pred) if metric in self.decision_metrics else None

    def decide(self, pred, tuned=None):
        return M.multilabel_decide(pred, tuned)

    def decision_scores(self, y, decisions, pred):
        probabilistic = self.scores(y, pred)
        return {**self.scores(y, decisions.astype(np.float64)), "logloss": probabilistic["logloss"],
                "roc_auc": probabilistic["roc_auc"]}

    def describe(self, tuned):
        return " t=" + "/".join(f"{t:.2f}" for t in tuned)

    def submission(self, decisions, columns, label_col):
        return {c: decisions[:, j].tolist() for j, c in enumerate(columns)}

    def vote(self, probas, train_y, tolerance):
        return label_vote(probas)

    def label_text(self, label, columns):
        return ";".join(c for c, v in zip(columns, label) if v) or "-"

    def agreement(self, labels, truth, train_y):
        return float(np.mean(np.all(np.asarray(labels) == truth, axis=1)))

    def calibration(self, pred, y):
        return pred.ravel(), y.ravel() == 1, "label"

    def diagnostics(self, y, pred, columns):
        d = M.multilabel_decide(pred)
        return {"labels": {c: {"positives": int(y[:, j].sum()), "predicted": int(d[:, j].sum()),
                               "tp": int((d[:, j] & y[:, j]).sum()),
                               "roc_auc": M.auc(y[:, j], pred[:, j])} for j, c in enumerate(columns)}}

    def diagnostics_section(self, diag, method, columns):
        rows = []
        for c, s in diag["labels"].items():
            f1 = 2 * s["tp"] / max(s["positives"] + s["predicted"], 1)
            rows.append([c, s["positives"], s["predicted"], s["tp"], f1, s["roc_auc"]])
        return (f"## Ensemble: {method}\n\nPer label, the ensemble's honest OOF probabilities "
                f"(ensembles/{method}/oof.npy) at 0.5 against the train labels.\n\n"
                + format_table(["label", "positives", "predicted", "true positives", "f1", "roc_auc"], rows,
                               markdown=True) + "\n\n![per-label scores](labels.png)")

    def draw_diagnostics(self, commit, out, diag, method, columns, y, pred):
        values = np.array([[s["roc_auc"], 2 * s["tp"] / max(s["positives"] + s["predicted"], 1)]
                           for s in diag["labels"].values()])
        return [plot_matrix(commit, out / "labels.png", values, ["roc_auc", "f1"], columns,
                            f"{method}: OOF per label", ".2f", "viridis", vmin=0, vmax=1)]


TASKS: dict[str, Task] = {"classification": Task(), "regression": RegressionTask(), "multilabel": MultilabelTask()}
CLASSIFICATION = TASKS["classification"]


def get(name: Optional[str]) -> Task:
    """The task object of a name; None (a manifest from before task types) is classification."""
    if name is None:
        return CLASSIFICATION
    if name not in TASKS:
        raise PipelineError(f"config: task={name!r} is not a task type (known: {', '.join(TASKS)})")
    return TASKS[name]


# ----------------------------------------------------------------------------- pieces


def _number(v: Any) -> Optional[float]:
    """The finite float a label string writes as a plain ASCII number (PLAIN_NUMBER), else None."""
    if not isinstance(v, str) or not PLAIN_NUMBER.fullmatch(v):
        return None
    x = float(v)
    return x if np.isfinite(x) else None


def _short(v: Any) -> str:
    """repr of a label cut to about 40 characters, for one-line errors."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _fractional(v: str) -> bool:
    x = _number(v)
    return x is not None and x != round(x)


def _check_k(counts: np.ndarray, k: int, names: list[str], what: str) -> None:
    smallest = int(counts.min())
    if k > smallest:
        name = names[int(counts.argmin())] if names else int(counts.argmin())
        raise PipelineError(f"folds.n_splits={k} is larger than the smallest {what} ({name!r} has {smallest} rows)")


def _stratified(strata: np.ndarray, k: int, seed: int, groups: Optional[np.ndarray]) -> np.ndarray:
    """(n,) fold of every row, stratified on `strata`, rows of one group in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is not None and len(np.unique(groups)) < k:
        raise PipelineError(f"folds: only {len(np.unique(groups))} groups for n_splits={k}")
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if groups is None
                else StratifiedGroupKFold(k, shuffle=True, random_state=seed))
    fold = np.full(len(strata), -1, dtype=np.int64)
    for f, (_, val) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
        fold[val] = f
    assert (fold >= 0).all(), "every row must land in a fold"
    return fold


def quantile_bins(y: np.ndarray, k: int, max_bins: int = 10) -> np.ndarray:
    """(n,) int bin of each target: equal-count bins of the targets' rank (ties broken by row),
    as many as keep at least k rows per bin (at most max_bins), so each fold gets every bin."""
    n = len(y)
    n_bins = int(max(1, min(max_bins, n // k)))
    rank = np.argsort(np.argsort(y, kind="stable"), kind="stable")
    return (rank * n_bins // n).astype(np.int64)


def _lgbm_kwargs(p: Any, seed: int, bins: Optional[list[int]] = None) -> dict:
    # deterministic + fixed threads: the same seed gives byte-identical matrices.
    kwargs = dict(n_estimators=p.n_estimators, learning_rate=p.learning_rate, num_leaves=p.num_leaves,
                  min_child_samples=p.min_child_samples, subsample=p.subsample, subsample_freq=1,
                  colsample_bytree=p.colsample_bytree, reg_lambda=p.reg_lambda, n_jobs=p.n_jobs,
                  random_state=seed, deterministic=True, force_row_wise=True, verbose=-1, max_bin=p.max_bin)
    if bins is not None:
        kwargs["max_bin_by_feature"] = list(bins)
    return kwargs


class PerLabel:
    """Multilabel: one binary estimator per label column (one-vs-rest); a label constant in the
    training rows is predicted at that constant. estimators_: the fitted estimators (None where
    constant)."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make

    def fit(self, X, Y: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> "PerLabel":
        """Y: (n, L) 0/1; sample_weight: (n,) or None, the same weights for every label."""
        self.constants_ = [float(Y[0, j]) if len(np.unique(Y[:, j])) < 2 else None for j in range(Y.shape[1])]
        self.estimators_ = [None if c is not None else self.make().fit(X, Y[:, j], sample_weight=sample_weight)
                            for j, c in enumerate(self.constants_)]
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, L) probability of each label."""
        cols = [np.full(X.shape[0], c) if est is None else est.predict_proba(X)[:, list(est.classes_).index(1)]
                for est, c in zip(self.estimators_, self.constants_)]
        return np.stack(cols, axis=1)

    @property
    def coef_(self) -> np.ndarray:
        """(L, F) coefficients of linear estimators, zeros for constant labels."""
        width = next(e.coef_.shape[1] for e in self.estimators_ if e is not None)
        return np.vstack([np.zeros((1, width)) if e is None else e.coef_ for e in self.estimators_])

    @property
    def intercept_(self) -> np.ndarray:
        return np.array([c if e is None else float(e.intercept_[0]) for e, c in zip(self.estimators_, self.constants_)])


# ----------------------------------------------------------------------------- pseudo-label votes


def class_vote(probas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Teachers' vote on every row.

    probas: (M, n, C) probabilities of M teachers. Returns label (n,) the class most teachers put
    first (ties: the higher mean probability among its voters, then the lower index), votes (n,)
    how many put it first, confidence (n,) float32 mean probability of it among those voters, and
    voters (n, M) bool.
    """
    p = probas.astype(np.float64)
    M_, n, C = p.shape
    picks = p.argmax(axis=2)                                   # (M, n)
    onehot = picks[:, :, None] == np.arange(C)                 # (M, n, C)
    counts = onehot.sum(axis=0)                                # (n, C)
    mean = (p * onehot).sum(axis=0) / np.maximum(counts, 1)    # (n, C), 0 where nobody voted
    # counts are integers and 0.5 * mean < 1, so this ranks by votes first, then confidence.
    label = np.argmax(counts + 0.5 * mean, axis=1)
    rows = np.arange(n)
    # float32 like the stored matrices, so a teacher's 0.9 "reaches" min_confidence=0.9.
    return label, counts[rows, label], mean[rows, label].astype(np.float32), (picks == label).T


def value_vote(probas: np.ndarray, train_y: np.ndarray, tolerance: float):
    """Regression teachers' vote. probas: (M, n, 1) values. The label is the teachers' median;
    a teacher votes for it when within `tolerance` train-target standard deviations of it;
    confidence (n,) float32 is 1 - (max - min of the teachers' values) / (train target std), so a
    small spread is a high confidence. Returns label (n,), votes (n,), confidence (n,), voters (n, M)."""
    v = probas[:, :, 0].astype(np.float64)                    # (M, n)
    scale = float(np.std(train_y)) or 1.0
    label = np.median(v, axis=0)
    voters = (np.abs(v - label) <= tolerance * scale).T       # (n, M)
    confidence = np.clip(1.0 - np.ptp(v, axis=0) / scale, 0.0, 1.0).astype(np.float32)
    return label, voters.sum(axis=1), confidence, voters


def label_vote(probas: np.ndarray):
    """Multilabel teachers' vote. probas: (M, n, L). Per label the majority of the teachers'
    decisions at 0.5 (ties: mean probability >= 0.5); a teacher votes for the row's label vector
    when all its decisions equal it; confidence (n,) float32 is the least confident label's mean
    probability of the chosen side, so a row counts only when every label is confident."""
    p = probas.astype(np.float64)
    decided = p >= 0.5                                         # (M, n, L)
    share, mean = decided.mean(axis=0), p.mean(axis=0)         # (n, L)
    label = ((share > 0.5) | ((share == 0.5) & (mean >= 0.5))).astype(np.int64)
    side = np.where(label == 1, mean, 1 - mean)                # (n, L)
    voters = np.all(decided == label[None].astype(bool), axis=2).T  # (n, M)
    return label, voters.sum(axis=1), side.min(axis=1).astype(np.float32), voters
