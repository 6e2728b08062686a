"""Inspect finished models from their matrices alone.

    python -m pipeline.inspect models/<exp> [--labels data/<exp>/prepared/train.jsonl]

Prints each model's OOF accuracy, F1 (binary or macro), log loss and per-fold scores, and the
pairwise correlation of the models' OOF predictions. Scores come from the manifests unless
--labels names the labels to score the matrices against.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np

from . import cli
from .artifacts import Matrices, list_models, load_model
from .errors import PipelineError
from .io import read_json
from .metrics import HIGHER_IS_BETTER, scores
from .tables import format_table


def oof_correlation(models: list[Matrices]) -> np.ndarray:
    """(M, M) Pearson correlation of the models' OOF probability of the last class (binary) or
    of their flattened OOF matrices (multiclass)."""
    cols = [m.oof[:, -1] if m.oof.shape[1] == 2 else m.oof.ravel() for m in models]
    return np.corrcoef(np.stack(cols)) if len(cols) > 1 else np.ones((1, 1))


def fold_table(models: list[Matrices], metric: str) -> str:
    K = max(m.manifest["n_splits"] for m in models)
    head = ["model"] + [f"fold{k}" for k in range(K)]
    rows = [[m.name] + [f[metric] for f in m.manifest["fold_scores"]]
            for m in models]
    return format_table(head, rows)


def model_table(models: list[Matrices], y: Optional[np.ndarray]) -> str:
    head = ["model", "kind", "accuracy", "f1", "logloss", "seconds"]
    rows = []
    for m in models:
        s = scores(y, m.oof) if y is not None else m.manifest["oof_scores"]
        rows.append([m.name, m.manifest["kind"], s["accuracy"], s["f1"], s["logloss"],
                     m.manifest["timings"]["total_seconds"]])
    return format_table(head, rows)


def corr_table(models: list[Matrices]) -> str:
    c = oof_correlation(models)
    return format_table(["corr"] + [m.name for m in models],
                        [[m.name] + [float(v) for v in c[i]] for i, m in enumerate(models)])


def labels_from(path: Path) -> np.ndarray:
    rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l]
    return np.array([r["y"] for r in rows], dtype=np.int64)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models_dir", type=Path)
    p.add_argument("--labels", type=Path, help="prepared train.jsonl holding the labels (y)")
    p.add_argument("--metric", default="accuracy", choices=sorted(HIGHER_IS_BETTER))
    args = p.parse_args(argv)
    models = [load_model(d) for d in list_models(args.models_dir)]
    if not models:
        raise PipelineError(f"no finished models (folders with manifest.json) under {args.models_dir}")
    y = labels_from(args.labels) if args.labels else None
    if y is not None and len(y) != models[0].oof.shape[0]:
        raise PipelineError(f"{args.labels} has {len(y)} rows, the OOF matrices {models[0].oof.shape[0]}")
    print(model_table(models, y))
    print("\nper-fold " + args.metric)
    print(fold_table(models, args.metric))
    print("\nOOF correlation")
    print(corr_table(models))
    return 0


if __name__ == "__main__":
    cli.run(main)
