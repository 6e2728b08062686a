"""A model kind for tests: records what the driver hands it, predicts a fixed function of the row."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data import Split


@dataclass
class SpyParams:
    crash_on_fold: int = -1   # raise KeyboardInterrupt when fitting this fold (a killed run)
    nan: bool = False         # predict NaN (a diverged model)


CALLS: list[dict] = []


class SpyModel:
    def __init__(self, params: SpyParams, n_classes: int, view: str):
        self.params, self.n_classes, self.view = params, n_classes, view
        self.info_ = {}

    def fit(self, train: Split, valid: Split, ctx) -> "SpyModel":
        if ctx.fold == self.params.crash_on_fold:
            raise KeyboardInterrupt
        CALLS.append({"fold": ctx.fold, "train": set(train.keys()), "valid": set(valid.keys()),
                      "train_y": train.y.copy(), "seed": ctx.seed,
                      "train_ids": [t.ids[i] for t, rows in train.parts for i in rows],
                      "train_texts": train.texts("raw"), "valid_texts": valid.texts("raw"),
                      "train_keys": train.keys(), "dir": str(ctx.out_dir),
                      "train_weight": None if train.sample_weight is None else np.array(train.sample_weight)})
        self.bias_ = float(np.mean(train.y))
        return self

    def predict_proba(self, split: Split) -> np.ndarray:
        if self.params.nan:
            return np.full((len(split), self.n_classes), np.nan)
        a, _ = split.texts(self.view)
        p1 = np.array([(len(t) % 7) / 10 + 0.2 for t in a]) * 0.5 + 0.5 * self.bias_
        return np.stack([1 - p1, p1], axis=1)

    def save(self, directory):
        return []
