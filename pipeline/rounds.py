"""Pseudo-label rounds read back: the students of each round scored, as the report and the
pseudo_label stage show them."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .artifacts import Matrices
from .config import ExperimentConfig
from .ensembling import fit_submitted
from .store import checked_models, load_round
from .formatting import format_table
from .tasks import get as get_task


def teacher_names(cfg: ExperimentConfig, round_: int) -> list[str]:
    """Round 1 learns from pseudo.models (default all); later rounds from the previous round's
    students, restricted to pseudo.models where those name any of them."""
    chosen = list(cfg.pseudo.models or [m.name for m in cfg.models])
    if round_ == 1:
        return chosen
    students = student_names(cfg)
    return [n for n in chosen if n in students] or students


def student_names(cfg: ExperimentConfig) -> list[str]:
    return list(cfg.pseudo.retrain or [m.name for m in cfg.models])


def ensemble_scores(cfg: ExperimentConfig, models: list[Matrices], y: np.ndarray, folds: np.ndarray,
                    test_y: Optional[np.ndarray]) -> dict:
    """Scores of the method the ensemble stage would submit over `models`, fitted as it fits it
    (its OOF rows from fits on the other folds), without writing a submission. At argmax, like
    every other score of the report, so rounds compare on equal terms (no tuned threshold)."""
    method, r = fit_submitted(cfg, models, y, folds)
    task = get_task(cfg.task)
    return {"method": method, "oof": r["oof_scores"],
            "test": task.scores(test_y, r["test"]) if test_y is not None else None}


def round_scores(cfg: ExperimentConfig, round_: int) -> dict:
    """Scores of the students' matrices of one round (round 0: the same models before pseudo
    labelling), recomputed from oof.npy / test.npy and the labels."""
    models, train, test, _, folds = checked_models(cfg, student_names(cfg), round_)
    task = get_task(cfg.task)
    return {"round": round_,
            "models": {m.name: {"oof": task.scores(train.y, m.oof),
                                "test": task.scores(test.y, m.test) if test.y is not None else None} for m in models},
            "ensemble": ensemble_scores(cfg, models, train.y, folds, test.y)}


def rounds_overview(cfg: ExperimentConfig, upto: int) -> list[dict]:
    """Round 0..upto: scores, plus the pseudo-label counts read back from each round's csv."""
    out = []
    for r in range(upto + 1):
        entry = round_scores(cfg, r)
        if r > 0:
            frame, info = load_round(cfg, r)
            per_class = {g: sum(fold[g] for fold in info["counts"].values()) for g in next(iter(info["counts"].values()))}
            entry.update({"rows": len(frame), "per_class": {g: n for g, n in per_class.items() if n},
                          "per_fold": frame["fold"].value_counts().sort_index().to_dict(),
                          "label_accuracy": info.get("label_accuracy"), "teachers": info["teachers"]})
        out.append(entry)
    return out


def ensemble_label(overview: list[dict]) -> str:
    """"[stack]", or with ensemble.submit=auto and rounds that chose differently "[stack/blend]"."""
    methods = list(dict.fromkeys(e["ensemble"]["method"] for e in overview))
    return f"[{'/'.join(methods)}]"


def overview_table(overview: list[dict], metric: str, markdown: bool = False) -> str:
    """One row per round: pseudo rows, each student's OOF metric, the ensemble's OOF (and test) metric."""
    names = list(overview[0]["models"])
    has_test = overview[0]["ensemble"]["test"] is not None
    label = ensemble_label(overview)
    head = ["round", "pseudo rows"] + [f"{n} oof {metric}" for n in names] + [f"{label} oof {metric}"]
    head += ([f"{n} test {metric}" for n in names] + [f"{label} test {metric}"]) if has_test else []
    rows = []
    for e in overview:
        row = [e["round"], e.get("rows", "-")] + [e["models"][n]["oof"][metric] for n in names]
        row.append(e["ensemble"]["oof"][metric])
        if has_test:
            row += [e["models"][n]["test"][metric] for n in names] + [e["ensemble"]["test"][metric]]
        rows.append(row)
    return format_table(head, rows, markdown=markdown)
