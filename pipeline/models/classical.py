"""Classical model kinds: TF-IDF + logistic regression, TF-IDF + LightGBM, LightGBM on pair features.

All fit their vectorisers on the fold's training rows only. Saved files run no code on load:
LightGBM's text format, .npy arrays (pickles refused) and JSON vocabularies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp

from .. import tasks
from ..combiners import with_coefficients
from ..data import Split
from ..errors import PipelineError
from ..fileio import read_json, read_npy, write_json, write_npy, write_text
from .base import FitContext
from .encoder import pair_cosine, split_embeddings
from .features import TfidfBlock, cosines_of, design_of, pair_row, sides
from .params import LGBM_DEFAULT_BINS, PairLGBMParams, TfidfLGBMParams, TfidfLRParams

PREDICTOR = "predictor.json"   # what `load` needs beside the weights: the task, class order, constant labels


class Classical:
    """Shared plumbing of the classical kinds (and of embed_lr, models/embed.py): design matrix from a
    Split, fit, predict, save. A subclass gives `kind`, `_design` and `_files`."""

    kind = "classical"  # the registry's name of the subclass, for error lines

    def __init__(self, params, n_classes: int, view: str):
        self.params, self.n_classes, self.view = params, n_classes, view
        self.info_: dict = {}
        self.label_ = f"{self.kind} (view {view!r})"

    def fit(self, train: Split, valid: Split, ctx: FitContext) -> "Classical":
        self.cache_ = ctx.cache
        self.task_ = ctx.task or tasks.CLASSIFICATION
        # "lr fold 1/3 (tfidf_lr, view 'lower')": what a one-line error about this fit starts with
        self.label_ = f"{ctx.label} ({self.kind}, view {self.view!r})" if ctx.label else self.label_
        X = self._design(train, fit=True)
        # sample_weight: pseudo rows' soft labels (None: every row 1, the unweighted fit)
        self.estimator_ = self._estimator(ctx.seed).fit(X, train.y, sample_weight=train.sample_weight)
        self.info_ = {"n_features": int(X.shape[1])}
        return self

    def predict_proba(self, split: Split) -> np.ndarray:
        """(n, n_outputs) predictions of the task (classification: columns follow class index even
        if a class was unseen)."""
        return self.task_.predict(self.estimator_, self._design(split, fit=False), self.n_classes)

    def _design(self, split: Split, fit: bool):
        raise NotImplementedError

    def use_cache(self, cache: dict) -> None:
        """The cache of derived features (pair rows, embeddings) the next predictions read and fill."""
        self.cache_ = cache

    def save(self, directory: Path) -> list[Path]:
        """The kind's files (`_files`) and predictor.json: nothing that runs code on load."""
        info = {"kind": self.kind, "task": self.task_.name, "n_outputs": self.n_classes, "view": self.view,
                **_estimator_info(self.estimator_)}
        return self._files(Path(directory)) + [write_json(Path(directory) / PREDICTOR, info)]

    def _files(self, directory: Path) -> list[Path]:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path, params, n_classes: int, view: str, task) -> "Classical":
        """A fitted model from save()'s files, predicting as the one that wrote them."""
        d = Path(directory)
        info = read_json(d / PREDICTOR)
        if not isinstance(info, dict) or info.get("kind") != cls.kind or info.get("n_outputs") != n_classes:
            raise PipelineError(f"{d / PREDICTOR}: not a saved {cls.kind} model with {n_classes} outputs; retrain it")
        model = cls(params, n_classes, view)
        model.task_, model.cache_ = task, {}
        model.estimator_ = model._load_estimator(d, info)
        model._load_state(d)
        return model

    def _load_estimator(self, d: Path, info: dict):
        """The linear estimator from lr_coef.npy / lr_intercept.npy; boosters override."""
        coef, intercept = read_npy(d / "lr_coef.npy"), read_npy(d / "lr_intercept.npy")
        return _rebuilt(self.task_.linear(self.params, 0), info,
                        lambda j, est: with_coefficients(est, coef[j:j + 1], intercept[j:j + 1], [0, 1]),
                        lambda est: with_coefficients(est, coef, intercept if coef.ndim > 1 else intercept[0],
                                                      info.get("classes")))

    def _load_state(self, d: Path) -> None:
        """Fitted state beside the estimator (the TF-IDF block); none by default."""

    def _new_block(self) -> TfidfBlock:
        return TfidfBlock(self.params, self.label_)

    def _sides(self, split: Split, fit: bool):
        """Each side's TF-IDF matrices (features.sides); fit: a new block fitted on the split's texts."""
        if fit:
            self.block_ = self._new_block()
        return sides(self.block_, *split.texts(self.view), fit=fit)

    def _load_tfidf(self, d: Path) -> None:
        self.block_ = self._new_block().restored(read_json(d / "tfidf.json"))

    def _estimator(self, seed: int):
        """The task's linear model (logistic, ridge, one-vs-rest logistic); boosters override."""
        return self.task_.linear(self.params, seed)

    def _save_lr(self, directory: Path) -> list[Path]:
        d = Path(directory)
        return [write_npy(d / "lr_coef.npy", np.asarray(self.estimator_.coef_)),
                write_npy(d / "lr_intercept.npy", np.atleast_1d(self.estimator_.intercept_))]

    def _save_tfidf(self, directory: Path) -> list[Path]:
        """Vocabularies and idf weights as JSON (no pickles), one entry per analyzer that is on."""
        return [write_json(Path(directory) / "tfidf.json", self.block_.state())]


def _estimator_info(est) -> dict:
    """What rebuilding `est` needs beside its weights: multilabel's constant labels (None where a
    label was learned), classification's class order; nothing for a regressor."""
    if hasattr(est, "constants_"):
        return {"constants": est.constants_}
    return {"classes": np.asarray(est.classes_).tolist()} if hasattr(est, "classes_") else {}


def _rebuilt(est, info: dict, per_label, whole):
    """The task's unfitted estimator `est` given its saved state: per_label(j, unfitted binary
    estimator) for each learned label of a multilabel PerLabel, else whole(est)."""
    if "constants" not in info:
        return whole(est)
    est.constants_ = info["constants"]
    est.estimators_ = [None if c is not None else per_label(j, est.make()) for j, c in enumerate(est.constants_)]
    return est


class SavedBooster:
    """A LightGBM booster read from its text file, predicting as the scikit-learn estimator that
    wrote it (LGBMClassifier: [1 - p, p] for two classes; LGBMRegressor: the values)."""

    def __init__(self, path: Path, classes: Optional[list] = None):
        import lightgbm

        self.booster_ = lightgbm.Booster(model_str=Path(path).read_text(encoding="utf-8"))
        if classes is not None:
            self.classes_ = np.asarray(classes, dtype=np.int64)

    def predict(self, X) -> np.ndarray:
        return self.booster_.predict(X)

    def predict_proba(self, X) -> np.ndarray:
        p = self.booster_.predict(X)
        return np.vstack([1.0 - p, p]).T if p.ndim == 1 else p


class TfidfLR(Classical):
    params: TfidfLRParams
    kind = "tfidf_lr"

    def _design(self, split: Split, fit: bool) -> sp.csr_matrix:
        return design_of(*self._sides(split, fit))

    def _files(self, directory: Path) -> list[Path]:
        return self._save_tfidf(directory) + self._save_lr(directory)

    def _load_state(self, d: Path) -> None:
        self._load_tfidf(d)


class _Booster(Classical):
    def _estimator(self, seed: int):
        return self.task_.booster(self.params, seed)

    def _load_estimator(self, d: Path, info: dict):
        """booster.txt (or booster_<j>.txt per learned label) as the task's estimator."""
        return _rebuilt(self.task_.booster(self.params, 0), info,
                        lambda j, _: SavedBooster(d / f"booster_{j}.txt", [0, 1]),
                        lambda _: SavedBooster(d / "booster.txt", info.get("classes")))

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
        va, vb = self._sides(split, fit)
        X = design_of(va, vb)
        dense_width = 0
        if vb is not None and self.params.pair_features:
            dense = np.hstack([self._hand_features(split), cosines_of(va, vb)])
            X = sp.hstack([sp.csr_matrix(dense), X], format="csr")
            dense_width = dense.shape[1]
        if fit:
            self.bins_ = [LGBM_DEFAULT_BINS] * dense_width + [self.params.max_bin] * (X.shape[1] - dense_width)
        return X.astype(np.float32)

    def _estimator(self, seed: int):
        """The task's booster, max_bin bins for the TF-IDF columns and LightGBM's default for the dense
        pair features (lengths, overlaps, cosines: continuous values that need their resolution)."""
        return self.task_.booster(self.params, seed, self.bins_)

    def _files(self, directory: Path) -> list[Path]:
        return self._save_tfidf(directory) + self._booster_file(directory)

    def _load_state(self, d: Path) -> None:
        self._load_tfidf(d)


class PairLGBM(_Booster):
    """LightGBM on pair features only: overlaps, length ratios, number/name mismatches, TF-IDF cosines."""
    params: PairLGBMParams
    kind = "pair_lgbm"

    def _design(self, split: Split, fit: bool) -> np.ndarray:
        if not split.is_pair:
            raise PipelineError("pair_lgbm needs a pair task (data.text_b)")
        parts = [self._hand_features(split), cosines_of(*self._sides(split, fit))]
        if self.params.embed:
            parts.append(pair_cosine(*split_embeddings(self.cache_, self.params.embed, split, self.view)))
        return np.hstack(parts)

    def _new_block(self) -> TfidfBlock:
        # texts with no word characters leave the word cosine at 0; the surface features remain
        return TfidfBlock(TfidfLRParams(min_df=1), self.label_, allow_empty=True)

    def _files(self, directory: Path) -> list[Path]:
        """booster.txt and tfidf.json (the cosine features' vocabulary, for serving)."""
        return self._save_tfidf(directory) + self._booster_file(directory)

    def _load_state(self, d: Path) -> None:
        self._load_tfidf(d)
