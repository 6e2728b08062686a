"""Splitting train rows into folds: stratified by the task, grouped when asked."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .config import ExperimentConfig
from .data import Table
from .errors import PipelineError
from .io import sha256_strings
from .tasks import get as get_task


def pair_groups(text_a: list[str], text_b: list[str]) -> np.ndarray:
    """Connected components of the sentence graph: pairs sharing a sentence share a group.

    Returns (n,) int group ids. Sentences are compared after whitespace/case normalisation.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(text_a, text_b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    roots: dict[str, int] = {}
    return np.array([roots.setdefault(find(a), len(roots)) for a in text_a], dtype=np.int64)


def fold_groups(train: Table, cfg: ExperimentConfig) -> Optional[np.ndarray]:
    """(n_train,) int group of every row when the split is grouped, else None."""
    if cfg.folds.strategy == "group":
        return np.unique(np.asarray(train.groups), return_inverse=True)[1]
    if cfg.folds.strategy == "auto_group":
        if not train.is_pair:
            raise PipelineError("folds.strategy=auto_group needs a pair task (data.text_b)")
        return pair_groups(*train.views["lower"])
    return None


def assign_folds(train: Table, cfg: ExperimentConfig, classes: list[str]) -> np.ndarray:
    """(n_train,) int fold of every row, by the task's splitter (stratified), grouped when asked."""
    return get_task(cfg.task).assign_folds(train.y, cfg.folds.n_splits, cfg.folds.seed, fold_groups(train, cfg),
                                           classes)


def data_signature(train: Table, cfg: ExperimentConfig) -> dict:
    """Hashes of the rows, labels and (grouped splits) groups the folds were made for.

    Groups matter: with auto_group they come from the texts, so an edited sentence can move rows
    between groups and make the saved folds leak, although ids and labels did not change.
    """
    labels = get_task(cfg.task).label_strings(train.y)
    sig = {"ids_sha256": sha256_strings(train.ids), "labels_sha256": sha256_strings(labels)}
    groups = fold_groups(train, cfg)
    if groups is not None:
        sig["groups_sha256"] = sha256_strings([str(g) for g in groups])
    return sig
