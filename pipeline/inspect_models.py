"""Inspect finished models from their matrices alone.

    python -m pipeline.inspect_models models/<exp> [--labels data/<exp>/prepared/train.jsonl]

Prints each model's OOF accuracy, F1 (binary or macro), log loss and per-fold scores, and the
pairwise correlation of the models' OOF predictions. Scores come from the manifests unless
--labels names the labels to score the matrices against. Models must predict the same train rows
(folders that disagree are named); a manifest without an optional entry (kind, timings, scores)
shows '-' in its place.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from . import cli
from .artifacts import list_models, load_model
from .diagnostics import check_labels, check_same_rows, corr_table, fold_table, labels_from, model_table
from .errors import PipelineError
from .metrics import HIGHER_IS_BETTER


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models_dir", type=Path)
    p.add_argument("--labels", type=Path, help="prepared train.jsonl holding the labels (y)")
    p.add_argument("--metric", default="accuracy", choices=sorted(HIGHER_IS_BETTER))
    args = p.parse_args(argv)
    models = [load_model(d) for d in list_models(args.models_dir)]
    if not models:
        raise PipelineError(f"no finished models (folders with manifest.json) under {args.models_dir}")
    check_same_rows(models)
    y = None
    if args.labels:
        y, ids = labels_from(args.labels)
        check_labels(y, ids, args.labels, models)
    print(model_table(models, y))
    print("\nper-fold " + args.metric)
    print(fold_table(models, args.metric))
    print("\nOOF correlation")
    print(corr_table(models))
    return 0


if __name__ == "__main__":
    cli.run(main)
