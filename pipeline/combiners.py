"""The ensemble's estimators: each fits on a list of M prediction matrices (n, C) and the labels
and predicts a combined (n, C) matrix, in scikit-learn's style (fit returns self, learned state
ends in `_`). Which estimator a method name means for a task type is the task's choice
(pipeline/tasks.py); none of these reads a config.

Every estimator also has `state() -> dict` (its parameters and learned state, JSON-able, floats
exact) and `from_state(d)` (a fitted estimator whose predict_proba equals the original's): the
ensemble stage writes the state to combiner.json and the serving process rebuilds the estimator
from it, finding the class by name in `estimators()`.
"""
from __future__ import annotations

import inspect
import sys
from typing import Callable, Optional

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression, Ridge

EPS = 1e-6


def _logit_features(mats: list[np.ndarray]) -> np.ndarray:
    """(n, M*C) log-probabilities: linear in log space is what a stacker should see."""
    return np.hstack([np.log(np.clip(m, EPS, 1.0)) for m in mats])


def _softmax_weights(z: np.ndarray) -> np.ndarray:
    """Unconstrained (M,) -> weights on the simplex (non-negative, summing to 1)."""
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


def estimators() -> dict[str, type]:
    """{class name: class} of every estimator of this module (those that rebuild from a state)."""
    return {name: cls for name, cls in inspect.getmembers(sys.modules[__name__], inspect.isclass)
            if cls.__module__ == __name__ and hasattr(cls, "from_state") and not name.startswith("_")}


def _array(values, dtype=np.float64) -> np.ndarray:
    return np.asarray(values, dtype=dtype)


def _linear_state(est) -> dict:
    """A fitted scikit-learn linear model's coefficients, exact as JSON floats with their dtype
    (fitted on float32 matrices they are float32, and predict in float32)."""
    coef = np.asarray(est.coef_)
    out = {"dtype": coef.dtype.name, "coef": coef.tolist(), "intercept": np.asarray(est.intercept_).tolist()}
    if hasattr(est, "classes_"):
        out["classes"] = np.asarray(est.classes_).tolist()
    return out


def with_coefficients(est, coef: np.ndarray, intercept, classes: Optional[list] = None):
    """A scikit-learn linear model `est` (unfitted) given fitted coefficients (and the class order
    of a classifier): it predicts as the fitted model they came from."""
    est.coef_, est.intercept_ = coef, intercept
    if classes is not None:
        est.classes_ = _array(classes, np.int64)
    est.n_features_in_ = coef.shape[-1]
    return est


def _with_linear_state(est, d: dict):
    """`est` (unfitted) given the coefficients of `_linear_state`."""
    return with_coefficients(est, _array(d["coef"], d["dtype"]), _array(d["intercept"], d["dtype"]), d.get("classes"))


class _Regularised:
    """Stackers: parameters C and seed; subclasses add their learned state."""

    def __init__(self, C: float = 1.0, seed: int = 0):
        self.C, self.seed = C, seed

    def _params(self) -> dict:
        return {"C": self.C, "seed": self.seed}

    def _lr(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)


class Stacker(_Regularised):
    """Classification: logistic regression over the models' log-probabilities."""

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "Stacker":
        self.n_classes_ = mats[0].shape[1]
        self.lr_ = self._lr().fit(_logit_features(mats), y)
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(mats[0]), self.n_classes_))
        out[:, self.lr_.classes_] = self.lr_.predict_proba(_logit_features(mats))
        return out

    def state(self) -> dict:
        return {**self._params(), "n_classes": self.n_classes_, "lr": _linear_state(self.lr_)}

    @classmethod
    def from_state(cls, d: dict) -> "Stacker":
        est = cls(d["C"], d["seed"])
        est.n_classes_, est.lr_ = int(d["n_classes"]), _with_linear_state(est._lr(), d["lr"])
        return est


class RidgeStacker(_Regularised):
    """Regression: ridge regression (alpha = 1 / C) over the models' (n, 1) predictions."""

    def _ridge(self) -> Ridge:
        return Ridge(alpha=1.0 / self.C, random_state=self.seed)

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "RidgeStacker":
        self.ridge_ = self._ridge().fit(np.hstack(mats), y)
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        return self.ridge_.predict(np.hstack(mats))[:, None]

    def state(self) -> dict:
        return {**self._params(), "ridge": _linear_state(self.ridge_)}

    @classmethod
    def from_state(cls, d: dict) -> "RidgeStacker":
        est = cls(d["C"], d["seed"])
        est.ridge_ = _with_linear_state(est._ridge(), d["ridge"])
        return est


class LabelStacker(_Regularised):
    """Multilabel: per label, logistic regression over the models' log-odds of that label; a label
    constant in the training rows is predicted at its rate there."""

    @staticmethod
    def _features(mats: list[np.ndarray], j: int) -> np.ndarray:
        """(n, M) log-odds of label j."""
        p = np.clip(np.stack([m[:, j] for m in mats], axis=1), EPS, 1 - EPS)
        return np.log(p) - np.log1p(-p)

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "LabelStacker":
        self.per_label_ = []
        for j in range(y.shape[1]):
            if len(np.unique(y[:, j])) < 2:
                self.per_label_.append(float(y[0, j]))
                continue
            self.per_label_.append(self._lr().fit(self._features(mats, j), y[:, j]))
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        n = len(mats[0])
        cols = [np.full(n, est) if isinstance(est, float) else est.predict_proba(self._features(mats, j))[:, 1]
                for j, est in enumerate(self.per_label_)]
        return np.stack(cols, axis=1)

    def state(self) -> dict:
        """per_label: a label's constant rate (a number) or its logistic regression's coefficients."""
        return {**self._params(), "per_label": [est if isinstance(est, float) else _linear_state(est)
                                                for est in self.per_label_]}

    @classmethod
    def from_state(cls, d: dict) -> "LabelStacker":
        est = cls(d["C"], d["seed"])
        est.per_label_ = [float(x) if isinstance(x, (int, float)) else _with_linear_state(est._lr(), x)
                          for x in d["per_label"]]
        return est


class _Stateless:
    """An estimator that learns nothing (votes): its state is empty."""

    def state(self) -> dict:
        return {}

    @classmethod
    def from_state(cls, d: dict):
        return cls()


class Blender:
    """Weighted mean of the matrices; weights non-negative, summing to 1, minimising the task's
    loss on the rows it is fitted on (classification: log loss of the true class)."""

    def _objective(self, P: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], float]:
        """P (M, n, C) -> loss(weights)."""
        picked = P[:, np.arange(len(y)), y]  # (M, n): each model's probability of the true class
        return lambda w: float(-np.log(np.clip(w @ picked, EPS, 1.0)).mean())

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "Blender":
        objective = self._objective(np.stack(mats), y)
        res = minimize(lambda z: objective(_softmax_weights(z)), np.zeros(len(mats)), method="L-BFGS-B")
        self.weights_ = _softmax_weights(res.x)
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        return np.tensordot(self.weights_, np.stack(mats), axes=1)

    def state(self) -> dict:
        return {"weights": self.weights_.tolist()}

    @classmethod
    def from_state(cls, d: dict) -> "Blender":
        est = cls()
        est.weights_ = _array(d["weights"])
        return est


class MSEBlender(Blender):
    """Regression: weights minimising the mean squared error of the blended (n, 1) values."""

    def _objective(self, P: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], float]:
        values = P[:, :, 0]  # (M, n)
        return lambda w: float(np.mean((w @ values - y) ** 2))


class BCEBlender(Blender):
    """Multilabel: weights minimising the mean binary log loss of the blended label probabilities."""

    def _objective(self, P: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], float]:
        def loss(w: np.ndarray) -> float:
            p = np.clip(np.tensordot(w, P, axes=1), EPS, 1 - EPS)
            return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

        return loss


class HillClimber(Blender):
    """Ensemble selection with replacement (Caruana et al. 2004): start from the `init` best single
    models, then add, one step at a time, the model (any, again or for the first time) whose
    addition to the running mean most improves score(y, matrix) (higher is better) on the rows it
    is fitted on; stop after `steps` additions or when no addition improves. With bags > 1, each of
    `bags` climbs sees a random `fraction` of the models (seeded), and the climbs' weights are
    averaged (Caruana's bagged selection, against overfitting the fitting rows).
    weights_ (M,): how often each model was picked / picks, per bag, averaged over bags.
    """

    def __init__(self, score: Callable[[np.ndarray, np.ndarray], float], init: int = 1, steps: int = 50,
                 bags: int = 1, fraction: float = 0.5, seed: int = 0):
        self.score, self.init, self.steps = score, init, steps
        self.bags, self.fraction, self.seed = bags, fraction, seed

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "HillClimber":
        P = np.stack(mats).astype(np.float64)
        rng = np.random.default_rng(self.seed)
        size = max(1, round(self.fraction * len(mats)))
        weights = np.zeros(len(mats))
        for _ in range(self.bags):
            pool = np.arange(len(mats)) if self.bags == 1 else np.sort(rng.choice(len(mats), size, replace=False))
            counts = self._climb(P, y, pool)
            weights += counts / counts.sum()
        self.weights_ = weights / self.bags
        return self

    def _climb(self, P: np.ndarray, y: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """P (M, n, C), pool: the model indices this climb may pick -> (M,) pick counts."""
        singles = np.array([self.score(y, P[m]) for m in pool])
        counts = np.zeros(len(P))
        counts[pool[np.argsort(-singles, kind="stable")[: self.init]]] = 1   # ties: the earlier model
        total = np.tensordot(counts, P, axes=1)
        best = self.score(y, total / counts.sum())
        for _ in range(self.steps):
            tried = [self.score(y, (total + P[m]) / (counts.sum() + 1)) for m in pool]
            i = int(np.argmax(tried))
            if tried[i] <= best:
                break
            best, counts[pool[i]], total = tried[i], counts[pool[i]] + 1, total + P[pool[i]]
        return counts

    def state(self) -> dict:
        return {"weights": self.weights_.tolist(), "init": self.init, "steps": self.steps, "bags": self.bags,
                "fraction": self.fraction, "seed": self.seed}

    @classmethod
    def from_state(cls, d: dict) -> "HillClimber":
        """An estimator that predicts (its score function is not state: it cannot be refitted)."""
        est = cls(None, d["init"], d["steps"], d["bags"], d["fraction"], d["seed"])
        est.weights_ = np.asarray(d["weights"], dtype=np.float64)
        return est


REFERENCE_POINTS = 1001   # quantiles kept per member column: the empirical CDF a rank is read from


def reference_quantiles(mats: list[np.ndarray]) -> list[np.ndarray]:
    """Per member, (Q, C) quantiles of each column over the fitting rows (Q = min(n, 1001))."""
    grid = np.linspace(0, 1, min(len(mats[0]), REFERENCE_POINTS))
    return [np.quantile(np.asarray(m, np.float64), grid, axis=0) for m in mats]


def ecdf(ref: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n,) positions in [0, 1] of the values `v` among the sorted reference values `ref` (Q,):
    linear between neighbours, the mean position of a run of equal references (mid-rank of ties),
    0 below the smallest and 1 above the largest."""
    q = len(ref)
    if q < 2:
        return np.full(len(v), 0.5)
    lo, hi = np.searchsorted(ref, v, "left"), np.searchsorted(ref, v, "right")
    i = np.clip(lo, 1, q - 1)
    a, b = ref[i - 1], ref[i]
    frac = np.clip(np.where(b > a, (v - a) / np.where(b > a, b - a, 1.0), 0.5), 0.0, 1.0)
    pos = np.where(hi > lo, (lo + hi - 1) / 2, i - 1 + frac)
    return pos / (q - 1)


def mean_ranks(refs: list[np.ndarray], mats: list[np.ndarray]) -> np.ndarray:
    """(n, C) mean over the M members of each value's rank among the fitting rows' values of that
    member column (their empirical CDF, read from the reference quantiles `refs`), in [0, 1]. A
    row's rank depends on that row alone, so test rows, held-out folds and single rows served one
    at a time all rank alike."""
    out = np.zeros(mats[0].shape, dtype=np.float64)
    for ref, m in zip(refs, mats):
        for c in range(m.shape[1]):
            out[:, c] += ecdf(ref[:, c], np.asarray(m[:, c], np.float64))
    return out / len(mats)


class RankAverager:
    """Classification: the mean of the models' per-column ranks (rank averaging). A value's rank is
    its position among the fitting rows' values of that model's column (their empirical CDF), so
    the ranks are learned on the rows the method is fitted on and a row's rank needs no other row.
    Binary: the classic AUC rank average: column 1 is the mean rank of P(class 1), column 0 one
    minus it. More classes: the mean ranks of each row, scaled to sum to 1 (uniform where all are 0).
    """

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "RankAverager":
        self.refs_ = reference_quantiles(mats)
        return self

    def _ranks(self, mats: list[np.ndarray]) -> np.ndarray:
        return mean_ranks(self.refs_, mats)

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        r = self._ranks(mats)
        if r.shape[1] == 2:
            return np.stack([1 - r[:, 1], r[:, 1]], axis=1)
        total = r.sum(axis=1, keepdims=True)
        return np.where(total > 0, r / np.where(total > 0, total, 1), 1 / r.shape[1])

    def state(self) -> dict:
        return {"refs": [ref.tolist() for ref in self.refs_]}

    @classmethod
    def from_state(cls, d: dict) -> "RankAverager":
        est = cls()
        est.refs_ = [np.asarray(ref, dtype=np.float64) for ref in d["refs"]]
        return est


class LabelRankAverager(RankAverager):
    """Multilabel: per label, the mean of the models' ranks of that label's probability, in [0, 1]."""

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        return self._ranks(mats)


class ValueRankAverager(RankAverager):
    """Regression: the mean of the models' ranks, mapped onto the fitting rows' targets: mean rank r
    -> the r-quantile of those targets (levels_: up to 1001 quantiles). Mean ranks cluster around
    0.5 where the models disagree, so uncertain rows move towards the median target."""

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "ValueRankAverager":
        super().fit(mats, y)
        self.levels_ = np.quantile(np.asarray(y, np.float64), np.linspace(0, 1, min(len(y), REFERENCE_POINTS)))
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        grid = np.linspace(0, 1, len(self.levels_))
        return np.interp(self._ranks(mats)[:, 0], grid, self.levels_)[:, None]

    def state(self) -> dict:
        return {**super().state(), "levels": self.levels_.tolist()}

    @classmethod
    def from_state(cls, d: dict) -> "ValueRankAverager":
        est = super().from_state(d)
        est.levels_ = np.asarray(d["levels"], dtype=np.float64)
        return est


class Voter(_Stateless):
    """Majority vote of the models' argmax; ties go to the class with the higher mean probability.

    predict_proba returns vote fractions, nudged by the mean probability so ties break.
    """

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "Voter":
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        C = mats[0].shape[1]
        votes = sum(np.eye(C)[m.argmax(axis=1)] for m in mats) / len(mats)
        p = votes + 1e-3 * np.mean(mats, axis=0)
        return p / p.sum(axis=1, keepdims=True)


class MedianVoter(Voter):
    """Regression: the median of the models' values."""

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        return np.median(np.stack(mats), axis=0)


class LabelVoter(Voter):
    """Multilabel: per label, the share of models predicting it (p >= 0.5), nudged by the mean
    probability so that it is >= 0.5 exactly for a majority, a tie going to the mean probability."""

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        P = np.stack(mats)
        return 0.999 * (P >= 0.5).mean(axis=0) + 0.001 * P.mean(axis=0)


class BestSingle:
    """The single model with the best OOF score (chosen inside each training split).

    score(y, matrix) -> the experiment metric, higher is better."""

    def __init__(self, score: Optional[Callable[[np.ndarray, np.ndarray], float]] = None):
        self.score = score  # only fit needs it: a BestSingle from_state predicts without

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "BestSingle":
        self.index_ = int(np.argmax([self.score(y, m) for m in mats]))
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        return mats[self.index_]

    def state(self) -> dict:
        return {"index": self.index_}

    @classmethod
    def from_state(cls, d: dict) -> "BestSingle":
        est = cls()
        est.index_ = int(d["index"])
        return est
