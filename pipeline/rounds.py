"""Pseudo-label rounds: choosing confident test rows by the teachers' consensus, fold by fold,
training the students on them, and reading the rounds back as scores.

Round N (1..pseudo.rounds) takes its teachers' matrices from round N-1 (round 0 is the train
stage). For fold k only fold k's teacher predictions on the test set (test_folds[k]) vote, never
the fold average: fold k's teachers never saw fold k's validation rows, so the student's OOF score
stays honest. The chosen rows are added to fold k's training part only, never to its validation
(pseudo.soft: once per class, weighted by the teachers' mean probability of it). The labels are
written by pseudo_labels.py; the students by the driver under models/<exp>/rounds/r<N>/.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from .artifacts import Matrices
from .combination import fit_submitted
from .config import ExperimentConfig, PseudoConfig
from .driver import ExtraRows, Run, open_run, train_models
from .errors import PipelineError
from .formatting import format_table
from .provenance import checked_models
from .pseudo_labels import CSV_COLUMNS, load_round, write_round
from .tasks import CLASSIFICATION, Task, get as get_task

log = logging.getLogger("pipeline.pseudo_label")


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rules:
    """The selection rules with defaults resolved against the number of teachers."""
    min_votes: int
    min_confidence: float
    max_fraction: float
    keep_class_balance: bool
    tolerance: float = 0.1   # regression: teachers agree within this many train-target stds


def resolve_rules(p: PseudoConfig, n_teachers: int) -> Rules:
    min_votes = n_teachers if p.min_votes is None else p.min_votes
    if not 1 <= min_votes <= n_teachers:
        raise PipelineError(f"config: pseudo.min_votes={min_votes} must be between 1 and the number of "
                            f"teachers ({n_teachers})")
    return Rules(min_votes, float(p.min_confidence), float(p.max_fraction), p.keep_class_balance, float(p.tolerance))


# ----------------------------------------------------------------------------- selection


def class_quotas(available: np.ndarray, train_counts: np.ndarray, total_cap: int, balanced: bool) -> np.ndarray:
    """(C,) how many rows each class may contribute.

    balanced: n rows in all, shared as floor(n * share_c), share_c being class c's share of the
    fold's training labels; n is the most that total_cap and every class's `available` candidates
    allow (n * share_c <= available_c), so the pseudo rows keep train's class balance and a class
    with few confident rows limits the others. Otherwise only the total cap applies.
    """
    if not balanced:
        return np.minimum(available, total_cap)
    N = int(train_counts.sum())
    # n * c / N <= a  <=>  n <= a * N // c, in exact integer arithmetic
    n = min([total_cap] + [int(a) * N // int(c) for a, c in zip(available, train_counts) if c > 0])
    return (n * train_counts) // N


def most_confident(rows: np.ndarray, confidence: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """`rows` ordered by confidence, then votes (both descending), then row index: deterministic."""
    return rows[np.lexsort((rows, -votes[rows], -confidence[rows]))]


@dataclass
class FoldSelection:
    """One fold's pseudo labels, most confident first: rows, labels (s,) or (s, L), votes (s,),
    confidence (s,) float32, voters (s, M) bool, groups (s,) the balance group of each label (its
    class; one group for regression and multilabel); candidates and quotas (G,) per group, cap the
    total allowed; mean (s, n_outputs) float64 the teachers' mean prediction (classification: the
    soft label, each class's mean probability over every teacher)."""
    rows: np.ndarray
    labels: np.ndarray
    votes: np.ndarray
    confidence: np.ndarray
    voters: np.ndarray
    candidates: np.ndarray
    quotas: np.ndarray
    cap: int
    groups: np.ndarray
    mean: np.ndarray


def select_fold(probas: np.ndarray, train_y: np.ndarray, rules: Rules, task: Task = CLASSIFICATION) -> FoldSelection:
    """Pick fold k's pseudo labels from its teachers' test predictions.

    probas: (M, n_test, n_outputs) fold k's teachers on the test set; train_y: labels of the rows
    fold k trains on (their count sets the total cap, their groups the balance). The task says
    what agreement is (Task.vote) and which groups keep_class_balance keeps.
    """
    label, votes, conf, voters = task.vote(probas, train_y, rules.tolerance)
    groups, G = task.group(label), task.n_groups(probas.shape[2])
    ok = (votes >= rules.min_votes) & (conf >= np.float32(rules.min_confidence))
    candidates = np.bincount(groups[ok], minlength=G)
    cap = int(np.floor(rules.max_fraction * len(train_y)))
    quotas = class_quotas(candidates, np.bincount(task.group(train_y), minlength=G), cap, rules.keep_class_balance)
    picked = [most_confident(np.flatnonzero(ok & (groups == c)), conf, votes)[: quotas[c]] for c in range(G)]
    rows = most_confident(np.concatenate(picked).astype(np.int64), conf, votes)[:cap]
    return FoldSelection(rows, label[rows], votes[rows], conf[rows], voters[rows], candidates, quotas, cap,
                         groups[rows], probas[:, rows].astype(np.float64).mean(axis=0))


def select_round(teachers: list[Matrices], folds: np.ndarray, y: np.ndarray, rules: Rules,
                 task: Task = CLASSIFICATION) -> list[FoldSelection]:
    """One FoldSelection per fold k, from test_folds[k] of every teacher. folds: (n_train,); y: the train labels."""
    K = int(folds.max()) + 1
    return [select_fold(np.stack([t.test_folds[k] for t in teachers]), y[folds != k], rules, task) for k in range(K)]


# ----------------------------------------------------------------------------- files


def selection_frame(round_: int, selections: list[FoldSelection], teachers: list[str], test_ids: list[str],
                    classes: list[str], task: Task = CLASSIFICATION, soft: bool = False) -> pd.DataFrame:
    """One row per (fold, pseudo label) with its provenance, folds in order, most confident first;
    soft: also p_<class>, the soft label (the teachers' mean probability of each class)."""
    rows = []
    for k, s in enumerate(selections):
        for i, r in enumerate(s.rows):
            rows.append({"round": round_, "fold": k, "test_row": int(r), "test_id": test_ids[r],
                         "label": task.label_text(s.labels[i], classes), "votes": int(s.votes[i]), "n_teachers": len(teachers),
                         "voters": ";".join(t for t, v in zip(teachers, s.voters[i]) if v),
                         "confidence": round(float(s.confidence[i]), 6),
                         **({f"p_{c}": round(float(p), 6) for c, p in zip(classes, s.mean[i])} if soft else {})})
    return pd.DataFrame(rows, columns=CSV_COLUMNS + ([f"p_{c}" for c in classes] if soft else []))


def counts_by_fold(selections: list[FoldSelection], names: list[str]) -> dict[str, dict[str, int]]:
    """{"fold<k>": {group: rows}} for every fold and balance group (class), zeros included."""
    return {f"fold{k}": dict(zip(names, np.bincount(s.groups, minlength=len(names)).tolist()))
            for k, s in enumerate(selections)}


def label_accuracy(selections: list[FoldSelection], test_y: Optional[np.ndarray], train_y: np.ndarray,
                   task: Task = CLASSIFICATION) -> Optional[float]:
    """Share of pseudo labels that agree with the true test label (Task.agreement), when the test
    file has labels. A diagnostic only, computed after the selection: the true labels never choose a row."""
    rows = np.concatenate([s.rows for s in selections])
    if test_y is None or not len(rows):
        return None
    return task.agreement(np.concatenate([s.labels for s in selections]), test_y[rows], train_y)


# ----------------------------------------------------------------------------- rounds


def extra_rows(selections: list[FoldSelection], soft: bool = False) -> ExtraRows:
    """fold k -> (its pseudo-labelled test rows, their labels from the teachers, not the file,
    weights): hard, each row once with weight None (1); soft, see soft_rows."""
    return {k: soft_rows(s) if soft else (s.rows, s.labels, None) for k, s in enumerate(selections) if len(s.rows)}


def soft_rows(s: FoldSelection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each of the s rows once per class c (rows (s * C,) repeated, labels (s * C,) 0..C-1 per row),
    weighted (s * C,) by the teachers' mean probability of c: for a log-loss fit, weighted copies
    are training on the soft target."""
    n, C = s.mean.shape
    return np.repeat(s.rows, C), np.tile(np.arange(C, dtype=np.int64), n), s.mean.reshape(-1)


def run_round(cfg: ExperimentConfig, run: Run, round_: int, force: bool = False) -> dict:
    """Select round `round_`'s pseudo labels from round_-1's teachers, write them, train the students."""
    names = teacher_names(cfg, round_)
    teachers, _, _, _, folds = checked_models(cfg, names, round_ - 1)
    rules = resolve_rules(cfg.pseudo, len(teachers))
    task = run.task
    selections = select_round(teachers, folds, run.train.y, rules, task)
    soft = cfg.pseudo.soft
    frame = selection_frame(round_, selections, names, run.test.ids, run.classes, task, soft)
    groups = task.group_names(run.classes)
    info = {"round": round_, "teacher_round": round_ - 1, "teachers": names, "students": student_names(cfg),
            "teacher_config_sha256": {t.name: t.manifest["config_sha256"] for t in teachers},
            "rules": dataclasses.asdict(rules), **({"soft": True} if soft else {}), "n_test": len(run.test),
            "counts": counts_by_fold(selections, groups),
            "candidates": {f"fold{k}": dict(zip(groups, s.candidates.tolist())) for k, s in enumerate(selections)},
            "caps": {f"fold{k}": {"total": s.cap, "per_class": dict(zip(groups, s.quotas.tolist()))}
                     for k, s in enumerate(selections)},
            "label_accuracy": label_accuracy(selections, run.test.y, run.train.y, task)}
    info = write_round(cfg, round_, frame, info)
    student_run = dataclasses.replace(run, round=round_, extra=extra_rows(selections, soft),
                                      extra_sha256=info["csv_sha256"])
    train_models(student_run, [cfg.model(name) for name in info["students"]], force=force)
    return info


def run_pseudo(cfg: ExperimentConfig, force: bool = False) -> list[dict]:
    """Every round in order: round N's teachers are round N-1's students."""
    run = open_run(cfg)
    return [run_round(cfg, run, r, force) for r in range(1, cfg.pseudo.rounds + 1)]


# ----------------------------------------------------------------------------- scores per round


def counts_table(info: dict, classes: list[str]) -> str:
    """Pseudo rows per fold and class of one round, with the candidates before the caps."""
    head = ["fold"] + classes + ["total", "candidates", "cap"]
    rows = []
    for fold, per_class in info["counts"].items():
        rows.append([fold] + [per_class[c] for c in classes] + [sum(per_class.values()),
                     sum(info["candidates"][fold].values()), info["caps"][fold]["total"]])
    return format_table(head, rows)


# ----------------------------------------------------------------------------- read back


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
            # .get: a labelled test file may lack what the metric needs (qwk of non-rating labels)
            row += [e["models"][n]["test"].get(metric, "-") for n in names] + [e["ensemble"]["test"].get(metric, "-")]
        rows.append(row)
    return format_table(head, rows, markdown=markdown)
