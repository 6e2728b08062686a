"""Fold assignment: which of K folds every train row belongs to, made once and checked by every
later stage. Stratified by the task's splitter, grouped when asked (a column, or automatic groups
for pair tasks where a sentence appears in several pairs).

    <paths.work>/<exp>/folds.csv    id, fold: the train rows in train-file order
    <paths.work>/<exp>/folds.json   splitter, seed, sizes, the csv's sha256 and the rows, labels and
                                    groups it was made for
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from .config import ExperimentConfig, to_dict
from .data import Table
from .errors import PipelineError
from .fileio import committed, read_json, sha256_file, sha256_strings
from .layout import folds_paths, save_resolved
from .prepared import load_prepared
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


def load_folds(cfg: ExperimentConfig, train: Table) -> tuple[np.ndarray, dict]:
    """(n_train,) int folds, refused when they were made for other rows, labels or settings."""
    csv_path, json_path = folds_paths(cfg)
    if not csv_path.is_file() or not json_path.is_file():
        raise PipelineError(f"{csv_path} not found: run `python -m pipeline.folds` first")
    info = read_json(json_path)
    if not isinstance(info, dict):
        raise PipelineError(f"{json_path} is not a folds record: run `python -m pipeline.folds --force`")
    if sha256_file(csv_path) != info.get("folds_csv_sha256"):
        raise PipelineError(f"{csv_path} does not match the hash in {json_path}")
    sig = data_signature(train, cfg)
    if any(info.get(k) != v for k, v in sig.items()):
        what = "groups" if info.get("groups_sha256") != sig.get("groups_sha256") else "rows or labels"
        raise PipelineError(f"{csv_path} was made for other train {what} than the prepared data: "
                            "run `python -m pipeline.folds` again")
    if info.get("folds_config") != to_dict(cfg.folds):
        raise PipelineError(f"{csv_path} was made with other fold settings than the config: "
                            "run `python -m pipeline.folds` again")
    df = pd.read_csv(csv_path, dtype={"id": str}, keep_default_na=False)
    if df["id"].tolist() != train.ids:
        raise PipelineError(f"{csv_path}: ids are not the train rows in train-file order")
    return df["fold"].to_numpy(dtype=np.int64), info


def write_folds(cfg: ExperimentConfig) -> dict:
    """Assign the prepared train rows to folds and write folds.csv with its record; returns the record."""
    train, _, meta = load_prepared(cfg)
    fold = assign_folds(train, cfg, meta["classes"])
    csv_path, json_path = folds_paths(cfg)
    with committed() as c:  # folds.csv, its record and config.yaml land together or not at all
        c.write_csv(csv_path, pd.DataFrame({"id": train.ids, "fold": fold}))
        save_resolved(cfg, csv_path.parent, c)
        info = {"splitter": cfg.folds.strategy, "n_splits": cfg.folds.n_splits, "seed": cfg.folds.seed,
                "folds_config": to_dict(cfg.folds), "n_rows": len(fold),
                "fold_sizes": np.bincount(fold).tolist(), "folds_csv_sha256": c.sha256(csv_path),
                **data_signature(train, cfg)}
        c.write_json(json_path, info)
    return info
