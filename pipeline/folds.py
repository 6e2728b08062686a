"""Folds stage: assign every train row to exactly one of K folds, once.

    python -m pipeline.folds [config.yaml] [key=value ...]

Writes data/<exp>/folds.csv (id, fold) and folds.json (splitter, seed, hashes). Every later
stage calls `load_folds`, which refuses folds made for other rows or labels.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pandas as pd

from . import cli
from .config import ExperimentConfig, to_dict
from .errors import PipelineError
from .io import committed
from .splits import assign_folds, data_signature
from .store import folds_paths, load_folds, load_prepared

log = logging.getLogger("pipeline.folds")


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
