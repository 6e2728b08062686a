"""Folds stage: assign every train row to exactly one of K folds, once.

    python -m pipeline.folds [config.yaml] [key=value ...]

Writes data/<exp>/folds.csv (id, fold) and folds.json (splitter, seed, hashes). Every later
stage calls `load_folds`, which refuses folds made for other rows or labels.
"""
from __future__ import annotations

import logging
from typing import Optional

from . import cli
from .errors import PipelineError
from .fold_assignment import load_folds, write_folds
from .layout import folds_paths
from .prepared import load_prepared

log = logging.getLogger("pipeline.folds")


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
    info = write_folds(cfg)
    print(f"folds: {info['n_splits']} {info['splitter']} folds of sizes {info['fold_sizes']} -> {csv_path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
