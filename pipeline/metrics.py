"""Scores of prediction matrices, per task type.

Classification: (n, C) class probabilities against (n,) class indices. F1 is binary F1 of class
index 1 for two classes, macro-F1 otherwise. Regression: (n, 1) predicted values against (n,)
float targets. Multilabel: (n, L) label probabilities against (n, L) 0/1 labels.
"""
from __future__ import annotations



from typing import Optional

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, log_loss, matthews_corrcoef, roc_auc_score

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "macro_f1": True, "logloss": False, "mcc": True,
                    "roc_auc": True, "pearson": True, "spearman": True, "rmse": False, "mae": False, "qwk": True}
GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)   # candidate thresholds of a probability
# qwk: the most ratings from the lowest target to the highest. Cut-point search tries every
# cut-point many times over, and a "rating" scale wider than this is a regression target.
QWK_MAX_RATINGS = 1000


def signed(metric: str, value: float) -> float:
    """`value` of `metric`, signed so that higher is always better."""
    return value if HIGHER_IS_BETTER[metric] else -value


# ----------------------------------------------------------------------------- classification


def decide(proba: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    """(n, C) probabilities -> (n,) class indices; a threshold applies to class 1 of a binary task."""
    if threshold is not None and proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of (n,) 0/1 labels against (n,) scores; 0.5 where only one class is present."""
    if len(np.unique(y)) < 2:
        return 0.5
    return float(roc_auc_score(y, score))


def class_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary: AUC of P(class 1); more classes: mean one-vs-rest AUC over the classes present."""
    if proba.shape[1] == 2:
        return auc(y, proba[:, 1])
    present = [c for c in range(proba.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean([auc(y == c, proba[:, c]) for c in present])) if present else 0.5


def scores(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> dict[str, float]:
    """accuracy, f1 (binary or macro), macro_f1, mcc, roc_auc and log loss of (n, C) probabilities
    against (n,) labels."""
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
    out["mcc"] = float(matthews_corrcoef(y, pred))
    out["roc_auc"] = class_auc(y, proba)
    return out


def class_logloss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean -log probability of the true class: (n,) labels, (n, C) probabilities whose rows sum
    to 1 (a fast log loss, for scoring many candidate mixtures)."""
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-7, 1.0))))


def score(metric: str, y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """The named metric, signed so that higher is always better (log loss negated)."""
    return signed(metric, scores(y, proba, threshold)[metric])


def tune_threshold(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    """Binary tasks: the class-1 threshold maximising `metric` on these (OOF) rows."""
    return binary_threshold(metric, y, proba[:, 1], lambda t: score(metric, y, proba, t))


def binary_threshold(metric: str, y: np.ndarray, p: np.ndarray, slow) -> float:
    """The threshold on GRID maximising `metric` of decisions p >= t against (n,) 0/1 labels y;
    f1 and accuracy vectorised, anything else through slow(t) -> signed score."""
    pred = p[None, :] >= GRID[:, None]          # (T, n) decisions at every threshold
    pos = (y == 1)[None, :]
    tp, fp, fn = (pred & pos).sum(1), (pred & ~pos).sum(1), (~pred & pos).sum(1)
    if metric == "f1":
        values = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    elif metric == "accuracy":
        values = (pred == pos).mean(1)
    else:
        values = np.array([slow(t) for t in GRID])
    return float(GRID[int(np.argmax(values))])


# ----------------------------------------------------------------------------- regression


def qwk(a: np.ndarray, b: np.ndarray) -> float:
    """Quadratic weighted kappa of two (n,) integer ratings over every rating from the lowest to
    the highest (sklearn's cohen_kappa_score with weights='quadratic' where each of them occurs),
    in O(n) time and memory for any range: with weights (i - j)**2 the observed disagreement is
    the mean of (a - b)**2 and the chance one (the confusion matrix's rows and columns independent)
    is var(a) + var(b) + (mean a - mean b)**2, so no k x k matrix is built (0..1e6 asked for 7 TiB)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    observed = float(np.mean((a - b) ** 2))
    expected = float(np.var(a) + np.var(b) + (np.mean(a) - np.mean(b)) ** 2)
    return 1.0 if expected == 0 else 1.0 - observed / expected


def is_ratings(y: np.ndarray) -> bool:
    """Integer targets spanning at most QWK_MAX_RATINGS ratings: what qwk and its cut-points take."""
    return is_integral(y) and float(np.max(y)) - float(np.min(y)) < QWK_MAX_RATINGS


def cut(values: np.ndarray, cuts: Optional[list[float]], lo: int, hi: int) -> np.ndarray:
    """(n,) values -> (n,) integer ratings in lo..hi: at the sorted cut-points (class lo + number of
    cut-points at or below the value), or without cut-points rounded to the nearest integer."""
    if cuts is None:
        return np.clip(np.rint(values), lo, hi).astype(np.int64)
    return lo + np.searchsorted(np.asarray(cuts), values, side="right").astype(np.int64)


def is_integral(y: np.ndarray) -> bool:
    return bool(len(y)) and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y)))


def _corr(f, y: np.ndarray, p: np.ndarray) -> float:
    """pearsonr / spearmanr, 0 where either side is constant (undefined)."""
    if np.ptp(y) == 0 or np.ptp(p) == 0:
        return 0.0
    return float(f(y, p)[0])


def regression_scores(y: np.ndarray, pred: np.ndarray, cuts: Optional[list[float]] = None) -> dict[str, float]:
    """rmse, mae, pearson, spearman of (n, 1) predictions against (n,) targets; qwk too when the
    targets are ratings (is_ratings; predictions cut at `cuts`, else rounded, into their range)."""
    p = np.asarray(pred, np.float64).reshape(len(y), -1)[:, 0]
    y = np.asarray(y, np.float64)
    out = {"rmse": float(np.sqrt(np.mean((p - y) ** 2))), "mae": float(np.mean(np.abs(p - y))),
           "pearson": _corr(pearsonr, y, p), "spearman": _corr(spearmanr, y, p)}
    if is_ratings(y):
        out["qwk"] = qwk(y, cut(p, cuts, int(y.min()), int(y.max())))
    return out


def fit_cuts(y: np.ndarray, p: np.ndarray, passes: int = 3, steps: int = 40) -> list[float]:
    """QWK cut-points for (n,) integer targets y and (n,) predictions p, fitted on these rows only:
    start at the midpoints between ratings, then move one cut-point at a time to the value between
    its neighbours that maximises QWK (coordinate ascent; deterministic)."""
    lo, hi = int(y.min()), int(y.max())
    cuts = np.arange(lo, hi, dtype=np.float64) + 0.5
    for _ in range(passes):
        for i in range(len(cuts)):
            left = cuts[i - 1] if i > 0 else min(p.min(), cuts[i] - 1)
            right = cuts[i + 1] if i + 1 < len(cuts) else max(p.max(), cuts[i] + 1)
            grid = np.linspace(left, right, steps + 2)[1:-1]
            best = max(grid, key=lambda c: qwk(y, cut(p, np.r_[cuts[:i], c, cuts[i + 1:]].tolist(), lo, hi)))
            cuts[i] = best
    return [round(float(c), 6) for c in cuts]


# ----------------------------------------------------------------------------- multilabel


def multilabel_decide(proba: np.ndarray, thresholds: Optional[list[float]] = None) -> np.ndarray:
    """(n, L) label probabilities -> (n, L) int 0/1, at per-label thresholds (default 0.5)."""
    t = np.full(proba.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    return (proba >= t[None, :]).astype(np.int64)


def multilabel_scores(y: np.ndarray, proba: np.ndarray, thresholds: Optional[list[float]] = None) -> dict[str, float]:
    """Of (n, L) label probabilities against (n, L) 0/1 labels: accuracy (every label right),
    f1 (micro over all label decisions), macro_f1 (mean per-label F1), mcc (over all label
    decisions), roc_auc (mean per-label AUC), logloss (mean binary log loss over labels)."""
    pred = multilabel_decide(proba, thresholds)
    return {"accuracy": float(accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(y.ravel(), pred.ravel())),
            "roc_auc": label_auc(y, proba), "logloss": label_logloss(y, proba)}


def label_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean per-label ROC-AUC of (n, L) label probabilities against (n, L) 0/1 labels."""
    return float(np.mean([auc(y[:, j], proba[:, j]) for j in range(y.shape[1])]))


def label_logloss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean binary log loss over every label of (n, L) probabilities against (n, L) 0/1 labels."""
    p = np.clip(proba.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def label_thresholds(metric: str, y: np.ndarray, proba: np.ndarray) -> list[float]:
    """Per-label thresholds: label j's maximises `metric` of that label's decisions alone (F1 for
    f1 and macro_f1), on these (OOF) rows."""
    def one(j: int) -> float:
        yj, pj = y[:, j], proba[:, j]
        slow = None if metric in ("f1", "macro_f1", "accuracy") else (
            lambda t: float(matthews_corrcoef(yj, (pj >= t).astype(np.int64))))
        return binary_threshold("f1" if metric == "macro_f1" else metric, yj, pj, slow)

    return [one(j) for j in range(y.shape[1])]


def oof_correlation(models: list) -> np.ndarray:
    """(M, M) Pearson correlation of the models' (artifacts.Matrices: `.oof` (n, C) each) OOF probability of the last class (binary) or
    of their flattened OOF matrices (multiclass); NaN for a model whose predictions are constant."""
    cols = [m.oof[:, -1] if m.oof.shape[1] == 2 else m.oof.ravel() for m in models]
    if len(cols) == 1:
        return np.ones((1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):  # constant columns: NaN, shown as MISSING
        return np.corrcoef(np.stack(cols).astype(np.float64))
