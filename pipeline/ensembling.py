"""Fitting the ensemble methods honestly on the models' OOF matrices (each fold's rows from a fit on the
other folds), choosing the submitted method, and what an ensemble was made from. Used by the
ensemble stage and by the pseudo-label rounds' scores."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .artifacts import Matrices
from .config import ExperimentConfig, config_hash, to_dict
from .metrics import signed
from .tasks import Task, get as get_task


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
