"""Combining the models: the ensemble methods fitted honestly on the models' OOF matrices (each
fold's rows from a fit on the other folds), the submitted method's choice, and the ensemble stage's
artifact with its writer and checked readers. Used by the ensemble stage, the pseudo-label rounds'
scores, the report and serving.

    <paths.models>/<exp>[/rounds/r<N>]/ensembles/<method>/oof.npy, test.npy, combiner.json
    <paths.models>/<exp>[/rounds/r<N>]/ensembles/summary.json, config.yaml
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .artifacts import Matrices
from .config import ExperimentConfig, config_hash, config_source, to_dict
from .errors import PipelineError
from .formatting import format_table
from .fileio import Commit, committed, read_json, sha256_file
from .layout import ensembles_dir, save_resolved, submission_path
from .metrics import signed
from .provenance import checked_models
from .submission import submission_frame
from .tasks import Task, get as get_task

COMBINER = "combiner.json"
SUMMARY = "summary.json"


def combiner_path(ensembles: Path, method: str) -> Path:
    """<ensembles>/<method>/combiner.json: the fitted estimator and tuned threshold of a method."""
    return Path(ensembles) / method / COMBINER


def make_method(name: str, cfg: ExperimentConfig) -> Callable[[], object]:
    """A factory of the estimator that method `name` means for the config's task."""
    e = cfg.ensemble
    select = {"init": e.select_init, "steps": e.select_steps, "bags": e.select_bags, "fraction": e.select_fraction}
    return get_task(cfg.task).method(name, e.stack_c, cfg.seed, cfg.metric, select)


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
    result = {"oof": oof, "test": test, "threshold": None, "oof_scores": task.scores(y, oof), "estimator": est}
    tuned = task.tune(cfg.metric, y, oof) if cfg.ensemble.tune_threshold else None
    if tuned is not None:
        result["threshold"] = tuned
        honest = honest_decisions(task, cfg.metric, y, oof, folds)
        result["oof_scores_thresholded"] = task.decision_scores(y, honest, oof)
    if hasattr(est, "weights_"):
        result["weights"] = dict(zip([m.name for m in models], np.round(est.weights_, 4).tolist()))
    return result


COMBINER_FORMAT = "pipeline-combiner/1"


def combiner_record(name: str, result: dict, models: list[Matrices], task: Task, classes: list[str]) -> dict:
    """combiner.json of a method: what serving needs to apply it to the members' mean fold
    predictions. estimator: a class name of pipeline/combiners.py; state: its `state()`;
    threshold: the tuned threshold, per-label thresholds or cut-points (null: none); models: the
    members, in the order the estimator takes their matrices."""
    est = result["estimator"]
    return {"format": COMBINER_FORMAT, "method": name, "estimator": type(est).__name__, "state": est.state(),
            "threshold": result["threshold"], "models": [m.name for m in models], "task": task.name,
            "classes": classes}


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


def made_from(cfg: ExperimentConfig, models: list[Matrices]) -> dict:
    """What an ensemble's matrices depend on: its settings and each model's OOF and test matrices.
    The report refuses an ensemble whose record differs from this (run the ensemble again)."""
    return {"settings_sha256": config_hash({"ensemble": to_dict(cfg.ensemble), "metric": cfg.metric, "seed": cfg.seed}),
            "matrices": {m.name: {k: m.manifest["files"][k] for k in ("oof.npy", "test.npy")} for m in models}}


def score_rows(names: list[str], oof_scores: list[dict], test_scores: list[Optional[dict]],
               keys: list[str], test_keys: list[str]) -> list[list]:
    """One row per model or method: OOF scores under `keys`, then test scores under `test_keys` (or '-')."""
    rows = []
    for n, o, t in zip(names, oof_scores, test_scores):
        rows.append([n] + [o[k] for k in keys] + ([t[k] for k in test_keys] if t else ["-"] * len(test_keys)))
    return rows


def run_ensemble(cfg: ExperimentConfig) -> dict:
    """Fit every method of the config on its round's checked models; write matrices, combiners,
    submissions and summary.json together; returns the summary."""
    e = cfg.ensemble
    models, train, test, meta, folds = checked_models(cfg, e.models, e.round)
    y, classes, task = train.y, meta["classes"], get_task(cfg.task)
    out_dir = ensembles_dir(cfg, e.round)
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
        save_resolved(cfg, out_dir, c)
        summary["files"] = {str(path.relative_to(out_dir)): c.sha256(path)
                            for _, path in c.staged if path.is_relative_to(out_dir)
                            and (path.suffix == ".npy" or path.name == COMBINER)}
        c.write_json(out_dir / SUMMARY, summary)
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


def check_ensemble_models(cfg: ExperimentConfig, summary_path: Path, summary: dict, models: list[Matrices]) -> None:
    """The ensemble's summary must list `models`, made from their current matrices with the
    current ensemble settings, or its matrices are another ensemble's."""
    listed = sorted(summary.get("models", {}))
    if listed != sorted(m.name for m in models):
        raise PipelineError(f"{summary_path} combines {listed}, the config's models are "
                            f"{sorted(m.name for m in models)}: run `python -m pipeline.ensemble` again")
    now, then = made_from(cfg, models), summary.get("made_from") or {}
    changed = [n for n in now["matrices"] if (then.get("matrices") or {}).get(n) != now["matrices"][n]]
    if then.get("settings_sha256") != now["settings_sha256"] or changed:
        what = f"models {changed} were retrained since" if changed else "the ensemble settings changed since"
        raise PipelineError(f"{summary_path} is stale ({what}): run `python -m pipeline.ensemble "
                            f"{config_source(cfg)}` again")


def checked_summary(cfg: ExperimentConfig, models: list[Matrices]) -> tuple[Path, dict]:
    """(ensembles folder, its summary.json) of the config's round, refused when missing or when it
    was not made from `models`' current matrices and the current ensemble settings."""
    out = ensembles_dir(cfg, cfg.ensemble.round)
    path = out / SUMMARY
    if not path.is_file():
        raise PipelineError(f"{path} not found: run `python -m pipeline.ensemble` first")
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise PipelineError(f"{path} is not an ensemble summary: run `python -m pipeline.ensemble` again")
    check_ensemble_models(cfg, path, summary, models)
    return out, summary


def checked_ensemble_file(out: Path, summary: dict, name: str) -> Path:
    """<ensembles>/<name>, refused when missing or not matching its sha256 in summary.json."""
    path = Path(out) / name
    if not path.is_file():
        raise PipelineError(f"{path} not found: run `python -m pipeline.ensemble` first")
    if sha256_file(path) != (summary.get("files") or {}).get(name):
        raise PipelineError(f"{path} does not match its sha256 in {Path(out) / SUMMARY}: "
                            "run `python -m pipeline.ensemble` again")
    return path
