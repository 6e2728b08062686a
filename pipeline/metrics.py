"""Scores of probability matrices. F1 is binary F1 of class index 1 for two classes, macro-F1 otherwise."""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "macro_f1": True, "logloss": False}


def decide(proba: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    """(n, C) probabilities -> (n,) class indices; a threshold applies to class 1 of a binary task."""
    if threshold is not None and proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)


def scores(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> dict[str, float]:
    """accuracy, f1 (binary or macro), macro_f1 and log loss of (n, C) probabilities against (n,) labels."""
    pred = decide(proba, threshold)
    n_classes = proba.shape[1]
    labels = np.arange(n_classes)
    clipped = np.clip(proba, 1e-7, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        "logloss": float(log_loss(y, clipped, labels=labels)),
    }
    out["f1"] = (float(f1_score(y, pred, pos_label=1, average="binary", zero_division=0))
                 if n_classes == 2 else out["macro_f1"])
    return out


def score(metric: str, y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """The named metric, signed so that higher is always better (log loss negated)."""
    value = scores(y, proba, threshold)[metric]
    return value if HIGHER_IS_BETTER[metric] else -value


def tune_threshold(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    """Binary tasks: the class-1 threshold maximising `metric` on these (OOF) rows."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    pred = proba[:, 1][None, :] >= grid[:, None]          # (T, n) decisions at every threshold
    pos = (y == 1)[None, :]
    tp, fp, fn = (pred & pos).sum(1), (pred & ~pos).sum(1), (~pred & pos).sum(1)
    if metric == "f1":
        values = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    elif metric == "accuracy":
        values = (pred == pos).mean(1)
    else:
        values = np.array([score(metric, y, proba, t) for t in grid])
    return float(grid[int(np.argmax(values))])
