"""The ensemble's estimators: each fits on a list of M prediction matrices (n, C) and the labels
and predicts a combined (n, C) matrix, in scikit-learn's style (fit returns self, learned state
ends in `_`). Which estimator a method name means for a task type is the task's choice
(pipeline/tasks.py); none of these reads a config.
"""
from __future__ import annotations

from typing import Callable

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


class Stacker:
    """Classification: logistic regression over the models' log-probabilities."""

    def __init__(self, C: float = 1.0, seed: int = 0):
        self.C, self.seed = C, seed

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "Stacker":
        self.n_classes_ = mats[0].shape[1]
        self.lr_ = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed).fit(_logit_features(mats), y)
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(mats[0]), self.n_classes_))
        out[:, self.lr_.classes_] = self.lr_.predict_proba(_logit_features(mats))
        return out


class RidgeStacker:
    """Regression: ridge regression (alpha = 1 / C) over the models' (n, 1) predictions."""

    def __init__(self, C: float = 1.0, seed: int = 0):
        self.C, self.seed = C, seed

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "RidgeStacker":
        self.ridge_ = Ridge(alpha=1.0 / self.C, random_state=self.seed).fit(np.hstack(mats), y)
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        return self.ridge_.predict(np.hstack(mats))[:, None]


class LabelStacker:
    """Multilabel: per label, logistic regression over the models' log-odds of that label; a label
    constant in the training rows is predicted at its rate there."""

    def __init__(self, C: float = 1.0, seed: int = 0):
        self.C, self.seed = C, seed

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
            lr = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
            self.per_label_.append(lr.fit(self._features(mats, j), y[:, j]))
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        n = len(mats[0])
        cols = [np.full(n, est) if isinstance(est, float) else est.predict_proba(self._features(mats, j))[:, 1]
                for j, est in enumerate(self.per_label_)]
        return np.stack(cols, axis=1)


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


class Voter:
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

    def __init__(self, score: Callable[[np.ndarray, np.ndarray], float]):
        self.score = score

    def fit(self, mats: list[np.ndarray], y: np.ndarray) -> "BestSingle":
        self.index_ = int(np.argmax([self.score(y, m) for m in mats]))
        return self

    def predict_proba(self, mats: list[np.ndarray]) -> np.ndarray:
        return mats[self.index_]


