"""The one interface every model kind implements, and what the driver hands it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..data import Split


@dataclass
class FitContext:
    """What a model may use while fitting one fold.

    cache: shared by every fold and model of one process (e.g. token ids per text view), so
    work that does not depend on the fold is done once. score(y, proba) -> the experiment metric,
    higher is better (log loss is negated), for early stopping. n_classes: the task's number of
    outputs (classes, 1 for regression, labels).
    """
    n_classes: int
    seed: int
    fold: int
    out_dir: Path
    score: Callable[[np.ndarray, np.ndarray], float]
    cache: dict = field(default_factory=dict)
    progress: bool = True
    label: str = ""
    task: Any = None   # pipeline.tasks.Task: loss, activation, estimators; None: classification
    metric: str = ""   # the experiment metric's name (early_stop: tuned); "" : none to tune for


class Model(Protocol):
    info_: dict  # filled by fit: anything worth recording in the fold's record (best epoch, samples/s)

    def fit(self, train: Split, valid: Split, ctx: FitContext) -> "Model":
        """Learn from `train`; `valid` is the fold's held-out rows, for early stopping only."""

    def predict_proba(self, split: Split) -> np.ndarray:
        """(len(split), n_outputs) float predictions: class probabilities (rows summing to 1),
        predicted values or label probabilities, as the fit's task says."""

    def save(self, directory: Path) -> list[Path]:
        """Write the fitted model in a format that runs no code on load; return the files."""
