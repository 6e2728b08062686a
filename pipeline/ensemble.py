"""Ensemble stage: stack, blend or vote the models' matrices into submission CSVs.

    python -m pipeline.ensemble [config.yaml] [key=value ...]

Every method is an estimator over a list of (n, C) prediction matrices, chosen by the task
(pipeline/tasks.py), scored honestly: its OOF predictions come from fitting it on the other folds'
OOF rows (the same folds as the models), and a decision threshold (binary classes, per label, or
QWK cut-points) is tuned the same way. Writes models/<exp>/ensembles/<method>/{oof,test}.npy,
models/<exp>/ensembles/summary.json and submissions/<exp>_<method>.csv (+ submissions/<exp>.csv).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from . import cli
from .artifacts import Matrices, check_agree, fingerprint_parts, load_model, mixed_versions, stale_reason
from .combiners import Blender, Stacker, Voter  # noqa: F401  (the estimators, importable from here)
from .config import ExperimentConfig, config_hash, config_source, model_identity, to_dict
from .errors import PipelineError
from .folds import load_folds
from .io import Commit, committed, read_json, sha256_strings
from .metrics import signed
from .preprocess import load_prepared
from .readers import read_table
from .store import folds_paths, input_files, models_dir, round_paths, submission_path
from .tables import format_table
from .tasks import Task, get as get_task

log = logging.getLogger("pipeline.ensemble")


def make_method(name: str, cfg: ExperimentConfig) -> Callable[[], object]:
    """A factory of the estimator that method `name` means for the config's task."""
    return get_task(cfg.task).method(name, cfg.ensemble.stack_c, cfg.seed, cfg.metric)


def honest_oof(factory: Callable[[], object], oofs: list[np.ndarray], y: np.ndarray,
               folds: np.ndarray) -> np.ndarray:
    """(n, C) OOF predictions of the ensemble itself: fold k's rows from a fit on the other folds."""
    out = np.zeros_like(oofs[0], dtype=np.float64)
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        est = factory().fit([m[tr] for m in oofs], y[tr])
        out[va] = est.predict_proba([m[va] for m in oofs])
    return out


def honest_decisions(task: Task, metric: str, y: np.ndarray, pred: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Decisions ((n,) classes or values, (n, L) labels) where fold k's threshold or cut-points
    were tuned on the other folds only."""
    parts = {}
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        parts[k] = task.decide(pred[va], task.tune(metric, y[tr], pred[tr]))
    first = next(iter(parts.values()))
    out = np.zeros((len(y),) + first.shape[1:], dtype=first.dtype)
    for k, d in parts.items():
        out[folds == k] = d
    return out


def combine(name: str, cfg: ExperimentConfig, models: list[Matrices], y: np.ndarray,
            folds: np.ndarray) -> dict:
    """Fit one method; return its OOF/test predictions, threshold (or cut-points) and honest scores."""
    task = get_task(cfg.task)
    factory = make_method(name, cfg)
    oofs = [m.oof for m in models]
    oof = honest_oof(factory, oofs, y, folds)
    est = factory().fit(oofs, y)
    test = est.predict_proba([m.test for m in models])
    result = {"oof": oof, "test": test, "threshold": None, "oof_scores": task.scores(y, oof)}
    tuned = task.tune(cfg.metric, y, oof) if cfg.ensemble.tune_threshold else None
    if tuned is not None:
        result["threshold"] = tuned
        honest = honest_decisions(task, cfg.metric, y, oof, folds)
        result["oof_scores_thresholded"] = task.decision_scores(y, honest, oof)
    if hasattr(est, "weights_"):
        result["weights"] = dict(zip([m.name for m in models], np.round(est.weights_, 4).tolist()))
    return result


def load_models(cfg: ExperimentConfig, names: Optional[list[str]] = None, round_: int = 0) -> list[Matrices]:
    """Each model's matrices from round `round_`; a model that round did not retrain (not one of
    pseudo.retrain) comes from the latest earlier round that has it."""
    wanted = names if names is not None else [m.name for m in cfg.models]
    if not wanted:
        raise PipelineError("config: no models to combine (the models list is empty)")
    found = {n: latest_model_dir(cfg, n, round_) for n in wanted}
    missing = [n for n, d in found.items() if d is None]
    if missing:
        raise PipelineError(f"no finished matrices for {missing} under {models_dir(cfg, round_)}: "
                            "run the train stage first")
    return [load_model(found[n]) for n in wanted]


def latest_model_dir(cfg: ExperimentConfig, name: str, round_: int) -> Optional[Path]:
    for r in range(round_, -1, -1):
        if (models_dir(cfg, r) / name / "manifest.json").is_file():
            return models_dir(cfg, r) / name
    return None


def check_current(cfg: ExperimentConfig, models: list[Matrices], meta: dict, folds_info: dict) -> None:
    """Refuse a model whose matrices were made with other settings than the current config (its
    params, view or kind, the metric, the data, the folds, or its round's pseudo labels), naming
    what changed and the command that retrains it."""
    for m in models:
        r = int(m.manifest.get("round", 0))
        parts = fingerprint_parts(model_identity(cfg.model(m.name)), meta["classes"], cfg.metric, meta, folds_info, r,
                                  pseudo_labels_sha256(cfg, r))
        reason = stale_reason(m.manifest, parts)
        if reason:
            again = (f"python -m pipeline.train {config_source(cfg)} --models {m.name}" if r == 0
                     else f"python -m pipeline.pseudo_label {config_source(cfg)}")
            raise PipelineError(f"model {m.name!r} ({m.path}) was trained with other settings than the config "
                                f"({reason}): run `{again}` to retrain it")


def pseudo_labels_sha256(cfg: ExperimentConfig, round_: int) -> Optional[str]:
    """The sha256 of round `round_`'s pseudo-label csv as its record states it (None for round 0
    or a round whose labels are gone)."""
    if round_ == 0:
        return None
    json_path = round_paths(cfg, round_)[1]
    record = read_json(json_path) if json_path.is_file() else {}
    return record.get("csv_sha256") if isinstance(record, dict) else None


def checked_models(cfg: ExperimentConfig, names: Optional[list[str]], round_: int):
    """Models, the prepared tables and the folds, after every manifest was checked against folds.csv
    (and a pseudo-label round's students against that round's labels)."""
    train, test, meta = load_prepared(cfg)
    folds, info = load_folds(cfg, train)
    models = load_models(cfg, names, round_)
    check_agree(models, folds_paths(cfg)[0], info, {"task": cfg.task, "test_ids_sha256": sha256_strings(test.ids),
                                                    "classes": meta["classes"], "n_test": len(test),
                                                    "prepared_train_sha256": meta["train_sha256"],
                                                    "prepared_test_sha256": meta["test_sha256"]})
    check_current(cfg, models, meta, info)
    mixed = mixed_versions(models)
    if mixed:
        log.warning("matrices were made under different versions of: %s", ", ".join(mixed))
    return models, train, test, meta, folds


def submission_columns(cfg: ExperimentConfig, meta: dict) -> tuple[str, str]:
    """(id column, label column) of the submission: the names the files use, "id" / "label" where
    the files have no names (row numbers, columns given by position)."""
    id_col = (meta.get("test_ids") or {}).get("column")
    if id_col is None:
        key = cfg.data.test_id if cfg.data.test_id is not None else cfg.data.id
        id_col = key if isinstance(key, str) else "id"
    return id_col, cfg.data.label if isinstance(cfg.data.label, str) else "label"


def submission_frame(cfg: ExperimentConfig, meta: dict, test_ids: list[str], decisions: np.ndarray,
                     classes: list[str]) -> pd.DataFrame:
    """One row per test row in test order: the id column, then the task's label columns (the
    original class name, the predicted value, or one 0/1 column per label)."""
    id_col, label_col = submission_columns(cfg, meta)
    df = pd.DataFrame({id_col: test_ids, **get_task(cfg.task).submission(decisions, classes, label_col)})
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


def honest_metric(result: dict, metric: str) -> float:
    """A method's honest OOF `metric` (thresholded where a threshold was tuned), higher is better."""
    return signed(metric, (result.get("oof_scores_thresholded") or result["oof_scores"])[metric])


def choose_submit(cfg: ExperimentConfig, results: dict[str, dict]) -> str:
    """ensemble.submit, or with `auto` the method with the best honest OOF metric (first on ties);
    never the test labels."""
    if cfg.ensemble.submit != "auto":
        return cfg.ensemble.submit
    return max(results, key=lambda name: honest_metric(results[name], cfg.metric))


def fit_submitted(cfg: ExperimentConfig, models: list[Matrices], y: np.ndarray,
                  folds: np.ndarray) -> tuple[str, dict]:
    """(name, combine() result) of the method the ensemble stage submits."""
    names = cfg.ensemble.methods if cfg.ensemble.submit == "auto" else [cfg.ensemble.submit]
    results = {name: combine(name, cfg, models, y, folds) for name in names}
    chosen = choose_submit(cfg, results)
    return chosen, results[chosen]


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
        summary["submission"] = str(c.write_csv(submission_path(cfg), submission_of(cfg, meta, results[summary["submitted"]],
                                                                                    test.ids, classes)))
        cli.save_resolved(cfg, out_dir, c)
        summary["files"] = {str(path.relative_to(out_dir)): c.sha256(path)
                            for _, path in c.staged if path.is_relative_to(out_dir) and path.suffix == ".npy"}
        c.write_json(out_dir / "summary.json", summary)
    return summary


def made_from(cfg: ExperimentConfig, models: list[Matrices]) -> dict:
    """What an ensemble's matrices depend on: its settings and each model's OOF and test matrices.
    The report refuses an ensemble whose record differs from this (run the ensemble again)."""
    return {"settings_sha256": config_hash({"ensemble": to_dict(cfg.ensemble), "metric": cfg.metric, "seed": cfg.seed}),
            "matrices": {m.name: {k: m.manifest["files"][k] for k in ("oof.npy", "test.npy")} for m in models}}


def submission_of(cfg: ExperimentConfig, meta: dict, r: dict, test_ids: list[str], classes: list[str]) -> pd.DataFrame:
    return submission_frame(cfg, meta, test_ids, get_task(cfg.task).decide(r["test"], r["threshold"]), classes)


def write_method(c: Commit, cfg: ExperimentConfig, meta: dict, directory: Path, name: str, r: dict, test,
                 classes: list[str]) -> dict:
    """Stage one method's matrices and submission; return its summary entry (scores, threshold,
    weights, test scores where the test file is labelled)."""
    c.write_npy(directory / "oof.npy", r["oof"].astype(np.float32))
    c.write_npy(directory / "test.npy", r["test"].astype(np.float32))
    task = get_task(cfg.task)
    path = c.write_csv(submission_path(cfg, name), submission_of(cfg, meta, r, test.ids, classes))
    test_scores = (task.decision_scores(test.y, task.decide(r["test"], r["threshold"]), r["test"])
                   if test.y is not None else None)
    entry = {k: v for k, v in r.items() if k not in ("oof", "test")}
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
