"""Folds stage: assign every train row to exactly one of K folds, once.

    python -m pipeline.folds [config.yaml] [key=value ...]

Writes data/<exp>/folds.csv (id, fold) and folds.json (splitter, seed, hashes). Every later
stage calls `load_folds`, which refuses folds made for other rows or labels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from . import cli
from .config import ExperimentConfig, to_dict
from .data import Table
from .errors import PipelineError
from .io import committed, read_json, sha256_file, sha256_strings
from .preprocess import load_prepared
from .store import folds_paths
from .tasks import get as get_task

log = logging.getLogger("pipeline.folds")


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


def run_folds(cfg: ExperimentConfig) -> dict:
    train, _, meta = load_prepared(cfg)
    fold = assign_folds(train, cfg, meta["classes"])
    csv_path, json_path = folds_paths(cfg)
    with committed() as c:  # folds.csv, its record and config.yaml land together or not at all
        c.write_csv(csv_path, pd.DataFrame({"id": train.ids, "fold": fold}))
        cli.save_resolved(cfg, csv_path.parent, c)
        info = {"splitter": cfg.folds.strategy, "n_splits": cfg.folds.n_splits, "seed": cfg.folds.seed,
                "folds_config": to_dict(cfg.folds), "n_rows": len(fold),
                "fold_sizes": np.bincount(fold).tolist(), "folds_csv_sha256": c.sha256(csv_path),
                **data_signature(train, cfg)}
        c.write_json(json_path, info)
    return info


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


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="recompute folds even if valid ones exist")
    args = p.parse_intermixed_args(argv)
    cfg = cli.load(args)
    train, _, _ = load_prepared(cfg)
    csv_path, _ = folds_paths(cfg)
    if not args.force and csv_path.is_file():
        try:
            load_folds(cfg, train)
            print(f"folds: {csv_path} is valid for this data and config; kept (--force to recompute)")
            return 0
        except PipelineError as e:
            log.info("recomputing folds: %s", e)
    info = run_folds(cfg)
    print(f"folds: {info['n_splits']} {info['splitter']} folds of sizes {info['fold_sizes']} -> {csv_path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
