"""Inspect finished models from their matrices alone.

    python -m pipeline.inspect models/<exp> [--labels data/<exp>/prepared/train.jsonl]

Prints each model's OOF accuracy, F1 (binary or macro), log loss and per-fold scores, and the
pairwise correlation of the models' OOF predictions. Scores come from the manifests unless
--labels names the labels to score the matrices against. Models must predict the same train rows
(folders that disagree are named); a manifest without an optional entry (kind, timings, scores)
shows '-' in its place.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np

from . import cli
from .artifacts import Matrices, list_models, load_model, recorded
from .errors import PipelineError, excerpt
from .io import sha256_strings
from .metrics import oof_correlation, HIGHER_IS_BETTER
from .data import labels_from_json
from .tasks import get as get_task
from .formatting import format_table


MISSING = "-"  # a value the manifest does not hold (older manifests, hand-edited ones)
LABELS_HINT = "--labels takes the prepared train.jsonl (data/<exp>/prepared/train.jsonl)"


def field(record, *keys):
    """record[k1][k2]... for optional manifest entries; MISSING where a key or an index is absent,
    and for anything that is not a number or a short string (nothing else belongs in a cell)."""
    for k in keys:
        if isinstance(record, dict) and k in record:
            record = record[k]
        elif isinstance(record, list) and isinstance(k, int) and 0 <= k < len(record):
            record = record[k]
        else:
            return MISSING
    if isinstance(record, (int, float)) and not isinstance(record, bool):
        return record
    return " ".join(record.split())[:40] if isinstance(record, str) else MISSING  # one line per row


def fold_table(models: list[Matrices], metric: str) -> str:
    """Per-fold scores from the manifests; models of fewer folds than others get MISSING cells."""
    K = max(m.test_folds.shape[0] for m in models)
    head = ["model"] + [f"fold{k}" for k in range(K)]
    rows = [[m.name] + [field(m.manifest, "fold_scores", k, metric) for k in range(K)] for m in models]
    return format_table(head, rows)


def model_table(models: list[Matrices], y: Optional[np.ndarray]) -> str:
    """The task's usual scores of each model (the manifests agree on the task: check_same_rows)."""
    task = get_task(recorded(models[0].manifest, "task"))
    head = ["model", "kind", "folds", *task.table_keys, "seconds"]
    rows = []
    for m in models:
        s = task.scores(y, m.oof) if y is not None else m.manifest.get("oof_scores")
        rows.append([m.name, field(m.manifest, "kind"), m.test_folds.shape[0]]
                    + [field(s, key) for key in task.table_keys]
                    + [field(m.manifest, "timings", "total_seconds")])
    return format_table(head, rows)


def corr_table(models: list[Matrices]) -> str:
    c = oof_correlation(models)
    cell = lambda v: float(v) if np.isfinite(v) else MISSING
    return format_table(["corr"] + [m.name for m in models],
                        [[m.name] + [cell(v) for v in c[i]] for i, m in enumerate(models)])


def check_same_rows(models: list[Matrices]) -> None:
    """Models compared side by side must predict the same train rows with the same classes; the
    number of folds may differ (the fold table shows MISSING where a model has fewer)."""
    first = models[0]
    for m in models[1:]:
        if m.oof.shape[0] != first.oof.shape[0]:
            raise PipelineError(f"{m.path} and {first.path} disagree on the number of train rows "
                                f"({m.oof.shape[0]} vs {first.oof.shape[0]}): they were trained on other data")
        if recorded(m.manifest, "task") != recorded(first.manifest, "task"):
            raise PipelineError(f"{m.path} and {first.path} disagree on task: they predict different things")
        for key in ("classes", "train_ids_sha256", "labels_sha256"):
            if key in m.manifest and key in first.manifest and m.manifest[key] != first.manifest[key]:
                raise PipelineError(f"{m.path} and {first.path} disagree on {key}: they were trained on other data")


def labels_from(path: Path) -> tuple[np.ndarray, Optional[list]]:
    """(y (n,) int64, ids or None) from a prepared train.jsonl; anything else is one PipelineError
    naming the file and line (a test file's y is null, a CSV is not JSON, ...)."""
    if not path.is_file():
        raise PipelineError(f"labels file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text (byte {e.start}); {LABELS_HINT}") from None
    rows = [(i, _label_row(line, i, path)) for i, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise PipelineError(f"{path} holds no rows; {LABELS_HINT}")
    ids = [r.get("id") for _, r in rows]
    return labels_from_json([r["y"] for _, r in rows]), (ids if all(isinstance(i, str) for i in ids) else None)


def _label_row(line: str, i: int, path: Path) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise PipelineError(f"{path} line {i} is not JSON: {LABELS_HINT}") from None
    if not isinstance(row, dict) or "y" not in row:
        raise PipelineError(f"{path} line {i} has no 'y' field: {LABELS_HINT}")
    y = row["y"]
    if y is None:
        raise PipelineError(f"{path} line {i}: y is null (a test file holds no labels); {LABELS_HINT}")
    if isinstance(y, bool) or not isinstance(y, (int, float, list)):
        raise PipelineError(f"{path} line {i}: y={excerpt(y)} is not a class index, value or 0/1 list; "
                            f"{LABELS_HINT}")
    return row


def check_labels(y: np.ndarray, ids: Optional[list], path: Path, models: list[Matrices]) -> None:
    """The labels must be those of the rows the matrices predict: count, class range, and where the
    manifest records them, the hashes of the train ids and labels."""
    m = models[0]
    n, n_classes = m.oof.shape
    if len(y) != n:
        raise PipelineError(f"{path} has {len(y)} rows, the OOF matrices {n}")
    task = get_task(recorded(m.manifest, "task"))
    bad = task.invalid_rows(y, n_classes)
    if len(bad):
        raise PipelineError(f"{path} row {bad[0] + 1}: y={excerpt(y[bad[0]].tolist())} is not {task.label_kind} of "
                            f"{m.path} ({n_classes} {task.outputs})")
    found = {"labels_sha256": sha256_strings(task.label_strings(y))}
    if ids is not None:
        found["train_ids_sha256"] = sha256_strings(ids)
    for key, value in found.items():
        if m.manifest.get(key, value) != value:
            raise PipelineError(f"{path} and {m.path / 'manifest.json'} disagree on {key}: "
                                "these are not the rows the models were trained on")


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
