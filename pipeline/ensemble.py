"""Ensemble stage: stack, blend, vote, select (hill climbing) or rank-average the models' matrices
into submission CSVs.

    python -m pipeline.ensemble [config.yaml] [key=value ...]

Every method is an estimator over a list of (n, C) prediction matrices, chosen by the task
(pipeline/tasks.py), scored honestly: its OOF predictions come from fitting it on the other folds'
OOF rows (the same folds as the models), and a decision threshold (binary classes, per label, or
QWK cut-points) is tuned the same way. Writes models/<exp>/ensembles/<method>/{oof,test}.npy and
combiner.json (the fitted estimator's state and the tuned threshold, for serving),
models/<exp>/ensembles/summary.json and submissions/<exp>_<method>.csv (+ submissions/<exp>.csv).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from . import cli
from .ensembling import choose_submit, combine, combiner_record, made_from
from .config import ExperimentConfig
from .errors import PipelineError
from .io import Commit, committed
from .readers import read_table
from .store import COMBINER, checked_models, combiner_path, input_files, models_dir, submission_path
from .formatting import format_table
from .tasks import get as get_task

log = logging.getLogger("pipeline.ensemble")


def submission_columns(cfg: ExperimentConfig, meta: dict) -> tuple[str, str]:
    """(id column, label column) of the submission: the names the files use, "id" / "label" where
    the files have no names (row numbers, columns given by position)."""
    id_col = (meta.get("test_ids") or {}).get("column")
    if id_col is None:
        key = cfg.data.test_id if cfg.data.test_id is not None else cfg.data.id
        id_col = key if isinstance(key, str) else "id"
    return id_col, cfg.data.label if isinstance(cfg.data.label, str) else "label"


def submission_frame(cfg: ExperimentConfig, meta: dict, test_ids: list[str], r: dict,
                     classes: list[str]) -> pd.DataFrame:
    """One row per test row in test order: the id column, then the task's label columns (the
    original class name, the predicted value, or one 0/1 column per label; with
    ensemble.submit_values=probabilities the method's test matrix, one column per output)."""
    id_col, label_col = submission_columns(cfg, meta)
    task = get_task(cfg.task)
    values = (task.probability_columns(r["test"], classes, label_col) if cfg.ensemble.submit_values == "probabilities"
              else task.submission(task.decide(r["test"], r["threshold"]), classes, label_col))
    df = pd.DataFrame({id_col: test_ids, **values})
    if len(df) != len(test_ids) or df[id_col].duplicated().any() or df.isna().any().any():
        raise PipelineError("submission check failed: ids must be unique and every row labelled")
    return df if cfg.data.sample_submission is None else like_sample(df, id_col, input_files(cfg)["data.sample_submission"],
                                                                     cfg.data.encoding)


def like_sample(df: pd.DataFrame, id_col: str, path: Path, encoding: str) -> pd.DataFrame:
    """`df` with exactly the columns, column order and id order of the sample submission at `path`
    (the Kaggle convention). The sample's id column is `id_col` if it has one, else its first
    column; a single prediction column takes the sample's name for it. Ids that are only in the
    sample or only in the test file, or prediction columns the sample names that the submission
    lacks, are one PipelineError."""
    sample = read_table(path, "auto", encoding=encoding)
    sample_id = id_col if id_col in sample.columns else sample.columns[0]
    ours, theirs = [c for c in df.columns if c != id_col], [c for c in sample.columns if c != sample_id]
    if len(ours) == 1 and len(theirs) == 1:
        df = df.rename(columns={ours[0]: theirs[0]})
    elif set(theirs) != set(ours):
        raise PipelineError(f"{path}: its prediction columns {theirs} are not the submission's {ours} "
                            "(data.label names them)")
    ids = [("" if v is None else str(v)).strip() for v in sample[sample_id]]
    only_sample, only_test = sorted(set(ids) - set(df[id_col])), sorted(set(df[id_col]) - set(ids))
    if only_sample or only_test or len(ids) != len(set(ids)):
        raise PipelineError(f"{path}: its ids ({sample_id!r}) differ from the test file's: "
                            f"{len(only_sample)} only in the sample {_some(only_sample)}, "
                            f"{len(only_test)} only in the test file {_some(only_test)}"
                            + (", and some are repeated" if len(ids) != len(set(ids)) else ""))
    out = df.rename(columns={id_col: sample_id}).set_index(sample_id).loc[ids].reset_index()
    return out[list(sample.columns)]


def _some(values: list[str], k: int = 3) -> str:
    return "(" + ", ".join(repr(v) for v in values[:k]) + (", ..." if len(values) > k else "") + ")" if values else ""


def score_rows(names: list[str], oof_scores: list[dict], test_scores: list[Optional[dict]],
               keys: list[str], test_keys: list[str]) -> list[list]:
    """One row per model or method: OOF scores under `keys`, then test scores under `test_keys` (or '-')."""
    rows = []
    for n, o, t in zip(names, oof_scores, test_scores):
        rows.append([n] + [o[k] for k in keys] + ([t[k] for k in test_keys] if t else ["-"] * len(test_keys)))
    return rows


def run_ensemble(cfg: ExperimentConfig) -> dict:
    e = cfg.ensemble
    models, train, test, meta, folds = checked_models(cfg, e.models, e.round)
    y, classes, task = train.y, meta["classes"], get_task(cfg.task)
    out_dir = models_dir(cfg, e.round) / "ensembles"
    ids = meta.get("test_ids") or {}
    summary: dict = {"models": {}, "methods": {}, "round": e.round, "metric": cfg.metric, "task": task.name,
                     "test_ids": ids.get("source", "unknown: run the preprocess stage again"),
                     "made_from": made_from(cfg, models)}
    for m in models:
        summary["models"][m.name] = {"oof": task.scores(y, m.oof),
                                     "test": task.scores(test.y, m.test) if test.y is not None else None}
    results = {name: combine(name, cfg, models, y, folds) for name in e.methods}
    summary["submitted"] = choose_submit(cfg, results)
    with committed() as c:  # matrices, submissions, config.yaml and summary.json: together or not at all
        for name, r in results.items():
            summary["methods"][name] = write_method(c, cfg, meta, out_dir / name, name, r, test, classes)
            c.write_json(combiner_path(out_dir, name), combiner_record(name, r, models, task, classes))
        summary["submission"] = str(c.write_csv(submission_path(cfg), submission_frame(cfg, meta, test.ids,
                                                                                       results[summary["submitted"]], classes)))
        cli.save_resolved(cfg, out_dir, c)
        summary["files"] = {str(path.relative_to(out_dir)): c.sha256(path)
                            for _, path in c.staged if path.is_relative_to(out_dir)
                            and (path.suffix == ".npy" or path.name == COMBINER)}
        c.write_json(out_dir / "summary.json", summary)
    return summary


def write_method(c: Commit, cfg: ExperimentConfig, meta: dict, directory: Path, name: str, r: dict, test,
                 classes: list[str]) -> dict:
    """Stage one method's matrices and submission; return its summary entry (scores, threshold,
    weights, test scores where the test file is labelled)."""
    c.write_npy(directory / "oof.npy", r["oof"].astype(np.float32))
    c.write_npy(directory / "test.npy", r["test"].astype(np.float32))
    task = get_task(cfg.task)
    path = c.write_csv(submission_path(cfg, name), submission_frame(cfg, meta, test.ids, r, classes))
    test_scores = (task.decision_scores(test.y, task.decide(r["test"], r["threshold"]), r["test"])
                   if test.y is not None else None)
    entry = {k: v for k, v in r.items() if k not in ("oof", "test", "estimator")}
    return {**entry, "test": test_scores, "submission": str(path)}


def summary_table(summary: dict, metric: str) -> str:
    task = get_task(summary.get("task"))
    names, oofs, tests = [], [], []
    for n, s in summary["models"].items():
        names.append(n), oofs.append(s["oof"]), tests.append(s["test"])
    for n, s in summary["methods"].items():
        t = s.get("threshold")
        names.append(f"[{n}]" + (task.describe(t) if t is not None else ""))
        oofs.append(s.get("oof_scores_thresholded") or s["oof_scores"])
        tests.append(s["test"])
    keys = list(task.table_keys) + ([metric] if metric not in task.table_keys else [])
    test_keys = list(task.table_keys[:2])
    head = ["model / method"] + [f"oof {k}" for k in keys] + [f"test {k}" for k in test_keys]
    return format_table(head, score_rows(names, oofs, tests, keys, test_keys))


def main(argv: Optional[list[str]] = None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg = cli.load(args)
    summary = run_ensemble(cfg)
    print(summary_table(summary, cfg.metric))
    for n, s in summary["methods"].items():
        if "weights" in s:
            print(f"{n} weights: {s['weights']}")
    how = " (best honest OOF " + cfg.metric + ")" if cfg.ensemble.submit == "auto" else ""
    print(f"submission: {submission_path(cfg)} ({summary['submitted']}{how}); ids: {summary['test_ids']}"
          + (" 0..n-1 (no id column in the test file; set data.test_id to use one)"
             if summary["test_ids"] == "row numbers" else ""))
    return 0


if __name__ == "__main__":
    cli.run(main)
