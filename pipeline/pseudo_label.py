"""Pseudo-label stage: label confident test rows with the teachers' votes, fold by fold, and retrain.

    python -m pipeline.pseudo_label [config.yaml] [key=value ...] [--force]

Round N (1..pseudo.rounds) takes its teachers' matrices from round N-1 (round 0 is the train
stage). For fold k only fold k's teacher predictions on the test set (test_folds[k]) vote, never
the fold average: fold k's teachers never saw fold k's validation rows, so the student's OOF score
stays honest. The chosen rows are added to fold k's training part only, never to its validation
(pseudo.soft: once per class, weighted by the teachers' mean probability of it).

Writes data/<exp>/pseudo/r<N>.csv (one row per pseudo label, with provenance), r<N>.json (rules,
counts per fold and class, the csv's sha256) and the students' matrices under
models/<exp>/rounds/r<N>/. Rerunning skips students whose fingerprint (pseudo labels included) is
unchanged. `ensemble.round=N` combines a round's students.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from . import cli
from .artifacts import Matrices
from .config import ExperimentConfig, PseudoConfig
from .errors import PipelineError
from .io import committed
from .rounds import overview_table, rounds_overview, student_names, teacher_names
from .store import checked_models, round_paths
from .formatting import format_table
from .tasks import CLASSIFICATION, Task
from .driver import ExtraRows, Run, open_run, train_models

log = logging.getLogger("pipeline.pseudo_label")
CSV_COLUMNS = ["round", "fold", "test_row", "test_id", "label", "votes", "n_teachers", "voters", "confidence"]


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


def write_round(cfg: ExperimentConfig, round_: int, frame: pd.DataFrame, info: dict) -> dict:
    """The csv first, then the json holding its sha256 (the json is the commit marker)."""
    csv_path, json_path = round_paths(cfg, round_)
    with committed() as c:  # the labels, their record and config.yaml land together or not at all
        c.write_csv(csv_path, frame)
        cli.save_resolved(cfg, csv_path.parent, c)
        info = {**info, "csv": csv_path.name, "csv_sha256": c.sha256(csv_path), "n_rows": len(frame)}
        c.write_json(json_path, info)
    return info


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


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="retrain the students even if finished outputs match")
    args = p.parse_intermixed_args(argv)
    cfg = cli.load(args)
    if not cfg.pseudo.enabled:
        print("pseudo-label: disabled (set pseudo.enabled=true to run it); nothing to do")
        return 0
    infos = run_pseudo(cfg, force=args.force)
    classes = list(infos[0]["counts"]["fold0"])
    for info in infos:
        acc = info["label_accuracy"]
        print(f"round {info['round']}: {info['n_rows']} pseudo labels from teachers {info['teachers']} "
              f"(round {info['teacher_round']})" + (f", {acc:.4f} of them correct" if acc is not None else "")
              + f" -> {round_paths(cfg, info['round'])[0]}")
        print(counts_table(info, classes))
    print(f"\nstudents before (round 0) and after pseudo labelling, and their ensemble ({cfg.ensemble.submit}; "
          "honest OOF; classes at argmax)")
    print(overview_table(rounds_overview(cfg, cfg.pseudo.rounds), cfg.metric))
    return 0


if __name__ == "__main__":
    cli.run(main)
