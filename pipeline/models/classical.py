"""Classical model kinds: TF-IDF + logistic regression, TF-IDF + LightGBM, LightGBM on pair features.

All fit their vectorisers on the fold's training rows only. Saved files run no code on load:
LightGBM's text format, .npy arrays (pickles refused) and JSON vocabularies.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp
from .. import tasks
from ..data import Split
from ..errors import PipelineError
from ..features import TfidfBlock, pair_row, tfidf_cosines, tfidf_design
from ..io import write_json, write_npy, write_text
from .base import FitContext
from .params import PairLGBMParams, TfidfLGBMParams, TfidfLRParams


class _Classical:
    """Shared plumbing: design matrix from a Split, fit, predict, save."""

    kind = "classical"  # the registry's name of the subclass, for error lines

    def __init__(self, params, n_classes: int, view: str):
        self.params, self.n_classes, self.view = params, n_classes, view
        self.info_: dict = {}
        self.label_ = f"{self.kind} (view {view!r})"

    def fit(self, train: Split, valid: Split, ctx: FitContext) -> "_Classical":
        self.cache_ = ctx.cache
        self.task_ = ctx.task or tasks.CLASSIFICATION
        # "lr fold 1/3 (tfidf_lr, view 'lower')": what a one-line error about this fit starts with
        self.label_ = f"{ctx.label} ({self.kind}, view {self.view!r})" if ctx.label else self.label_
        X = self._design(train, fit=True)
        self.estimator_ = self._estimator(ctx.seed).fit(X, train.y)
        self.info_ = {"n_features": int(X.shape[1])}
        return self

    def predict_proba(self, split: Split) -> np.ndarray:
        """(n, n_outputs) predictions of the task (classification: columns follow class index even
        if a class was unseen)."""
        return self.task_.predict(self.estimator_, self._design(split, fit=False), self.n_classes)

    def _design(self, split: Split, fit: bool):
        raise NotImplementedError

    def _estimator(self, seed: int):
        """The task's linear model (logistic, ridge, one-vs-rest logistic); boosters override."""
        return self.task_.linear(self.params, seed)

    def _save_lr(self, directory: Path) -> list[Path]:
        d = Path(directory)
        return [write_npy(d / "lr_coef.npy", np.asarray(self.estimator_.coef_)),
                write_npy(d / "lr_intercept.npy", np.atleast_1d(self.estimator_.intercept_))]

    def _save_tfidf(self, directory: Path) -> list[Path]:
        """Vocabularies and idf weights as JSON (no pickles), one entry per analyzer that is on."""
        state = [{"analyzer": vec.analyzer, "vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()},
                  "idf": vec.idf_.tolist()}
                 for vec in self.block_.vectorizers_ if vec is not None]
        return [write_json(Path(directory) / "tfidf.json", state)]


class TfidfLR(_Classical):
    params: TfidfLRParams
    kind = "tfidf_lr"

    def _design(self, split: Split, fit: bool) -> sp.csr_matrix:
        a, b = split.texts(self.view)
        if fit:
            self.block_ = TfidfBlock(self.params, self.label_).fit(a + (b or []))
        return tfidf_design(self.block_, a, b)

    def save(self, directory: Path) -> list[Path]:
        return self._save_tfidf(directory) + self._save_lr(directory)


class _Booster(_Classical):
    def _estimator(self, seed: int):
        return self.task_.booster(self.params, seed)

    def _booster_file(self, directory: Path) -> list[Path]:
        """booster.txt (LightGBM's text format); multilabel: booster_<j>.txt per label that was
        not constant in the fold."""
        many = getattr(self.estimator_, "estimators_", None)
        if many is None:
            return [write_text(Path(directory) / "booster.txt", self.estimator_.booster_.model_to_string())]
        return [write_text(Path(directory) / f"booster_{j}.txt", est.booster_.model_to_string())
                for j, est in enumerate(many) if est is not None]

    def _hand_features(self, split: Split) -> np.ndarray:
        """(n, F) surface pair features from the raw view (the named-token features need its case),
        or from the lower view where only it has words (segmented Chinese); they do not depend on
        the fold, so each table's are cached."""
        parts = []
        for table, rows in split.parts:
            a_view = "lower" if table.segmented else "raw"
            key = ("pair_rows", table.name, id(table), a_view)
            if key not in self.cache_:
                a, b = table.views[a_view]
                self.cache_[key] = np.array([pair_row(x, y) for x, y in zip(a, b)], dtype=np.float32)
            parts.append(self.cache_[key][rows])
        return np.concatenate(parts)


class TfidfLGBM(_Booster):
    params: TfidfLGBMParams
    kind = "tfidf_lgbm"

    def _design(self, split: Split, fit: bool) -> sp.csr_matrix:
        a, b = split.texts(self.view)
        if fit:
            self.block_ = TfidfBlock(self.params, self.label_).fit(a + (b or []))
        X = tfidf_design(self.block_, a, b)
        if b is not None and self.params.pair_features:
            dense = np.hstack([self._hand_features(split), tfidf_cosines(self.block_, a, b)])
            X = sp.hstack([sp.csr_matrix(dense), X], format="csr")
        return X.astype(np.float32)

    def save(self, directory: Path) -> list[Path]:
        return self._save_tfidf(directory) + self._booster_file(directory)


class PairLGBM(_Booster):
    """LightGBM on pair features only: overlaps, length ratios, number/name mismatches, TF-IDF cosines."""
    params: PairLGBMParams
    kind = "pair_lgbm"

    def _design(self, split: Split, fit: bool) -> np.ndarray:
        a, b = split.texts(self.view)
        if b is None:
            raise PipelineError("pair_lgbm needs a pair task (data.text_b)")
        if fit:
            # texts with no word characters leave the word cosine at 0; the surface features remain
            self.block_ = TfidfBlock(TfidfLRParams(min_df=1), self.label_, allow_empty=True).fit(a + b)
        parts = [self._hand_features(split), tfidf_cosines(self.block_, a, b)]
        if self.params.embed:
            from .embed import pair_cosine, split_embeddings

            parts.append(pair_cosine(*split_embeddings(self.cache_, self.params.embed, split, self.view)))
        return np.hstack(parts)

    def save(self, directory: Path) -> list[Path]:
        return self._booster_file(directory)
