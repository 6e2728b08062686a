"""The report: scores per model and fold, model correlation, the ensemble's confusion matrix,
calibration and the pseudo-label rounds, as a Markdown page with PNG plots; the report stage's
artifact and its writer.

    <paths.reports>/<exp>/report.md, report.json (the page's numbers), config.yaml and the plots
    fold_scores.png, correlation.png, confusion.png, reliability.png, pseudo_rounds.png

Every number is recomputed from the .npy matrices, the labels and folds.csv after the manifests
were checked; none is read from a log.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .artifacts import Matrices, manifest_path, recorded
from .combination import checked_ensemble_file, checked_summary
from .config import ExperimentConfig
from .data import labels_from_json
from .errors import PipelineError, excerpt
from .formatting import format_table
from .fileio import Commit, committed, read_npy, sha256_strings
from .layout import models_dir, reports_dir, round_paths, save_resolved
from .metrics import oof_correlation
from .plots import plot_matrix, save_figure, subplots
from .provenance import checked_models
from .rounds import ensemble_label, overview_table, rounds_overview, student_names
from .tasks import Task, get as get_task

log = logging.getLogger("pipeline.report")
N_BINS = 10


@dataclass
class Evidence:
    """What the page is made from, all checked against folds.csv and each other.

    models: ensemble.round's matrices; y, folds: (n_train,); test_y: (n_test,) or None;
    ens_oof: (n_train, C) and ens_test: (n_test, C) of the ensemble.submit method.
    """
    cfg: ExperimentConfig
    models: list[Matrices]
    y: np.ndarray
    folds: np.ndarray
    test_y: Optional[np.ndarray]
    classes: list[str]
    method: str
    ens_oof: np.ndarray
    ens_test: np.ndarray

    @property
    def task(self) -> Task:
        return get_task(self.cfg.task)


def ensemble_matrix(out: Path, summary: dict, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A matrix of the submitted method, (n, C), verified against its sha256 in summary.json."""
    path = checked_ensemble_file(out, summary, name)
    arr = read_npy(path)
    if arr.shape != shape or not np.isfinite(arr).all():
        raise PipelineError(f"{path} has shape {arr.shape} (expected {shape}) or non-finite values: "
                            "run `python -m pipeline.ensemble` again")
    return arr.astype(np.float64)


def gather(cfg: ExperimentConfig) -> Evidence:
    e = cfg.ensemble
    models, train, test, meta, folds = checked_models(cfg, e.models, e.round)
    out, record = checked_summary(cfg, models)
    submitted = record.get("submitted", e.submit)
    C = len(meta["classes"])
    oof = ensemble_matrix(out, record, f"{submitted}/oof.npy", (len(train), C))
    test_p = ensemble_matrix(out, record, f"{submitted}/test.npy", (len(test), C))
    return Evidence(cfg, models, train.y, folds, test.y, meta["classes"], submitted, oof, test_p)


# ----------------------------------------------------------------------------- numbers


def fold_scores(oof: np.ndarray, y: np.ndarray, folds: np.ndarray, metric: str, task: Task) -> list[float]:
    """`metric` of each fold's OOF rows; oof (n, C), y and folds (n,)."""
    return [task.scores(y[folds == k], oof[folds == k])[metric] for k in range(int(folds.max()) + 1)]


def reliability(proba: np.ndarray, y: np.ndarray, task: Task, bins: int = N_BINS) -> Optional[dict]:
    """Calibration of (n, C) probabilities, as the task defines it (binary: P(class 1) against the
    share of class 1; more classes: the top class's probability against its accuracy; multilabel:
    every label probability against the label); None for regression. `bins` equal-width bins.

    Returns mean predicted (b,), observed (b,), count (b,) over the non-empty bins, the expected
    calibration error (count-weighted mean gap) and what was calibrated."""
    inputs = task.calibration(proba, y)
    if inputs is None:
        return None
    p, hit, what = inputs
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    keep = count > 0
    pred = np.bincount(idx, weights=p, minlength=bins)[keep] / count[keep]
    seen = np.bincount(idx, weights=hit.astype(float), minlength=bins)[keep] / count[keep]
    ece = float(np.sum(count[keep] * np.abs(pred - seen)) / len(p))
    return {"predicted": pred.tolist(), "observed": seen.tolist(), "count": count[keep].tolist(), "ece": ece,
            "of": what}


def test_scores(task: Task, test_y: Optional[np.ndarray], proba: np.ndarray) -> Optional[dict]:
    return task.scores(test_y, proba) if test_y is not None else None


def numbers(ev: Evidence) -> dict:
    """Every number the page shows, recomputed from the matrices and the labels."""
    metric, task = ev.cfg.metric, ev.task

    def entry(oof: np.ndarray, test: np.ndarray) -> dict:
        return {"oof": task.scores(ev.y, oof), "test": test_scores(task, ev.test_y, test),
                "folds": fold_scores(oof, ev.y, ev.folds, metric, task), "calibration": reliability(oof, ev.y, task)}

    models = {m.name: {"kind": m.manifest.get("kind", "-"), **entry(m.oof, m.test)} for m in ev.models}
    ens = {"method": ev.method, **entry(ev.ens_oof, ev.ens_test), **task.diagnostics(ev.y, ev.ens_oof, ev.classes)}
    return {"experiment": ev.cfg.experiment, "metric": metric, "task": task.name, "columns": task.outputs, "round": ev.cfg.ensemble.round,
            "classes": ev.classes, "n_train": len(ev.y), "n_test": len(ev.ens_test),
            "n_splits": int(ev.folds.max()) + 1, "models": models, "ensemble": ens,
            "correlation": oof_correlation(ev.models).tolist()}


def finished_rounds(cfg: ExperimentConfig) -> int:
    """The last pseudo-label round whose labels and every student's matrices are on disk (0: none)."""
    done = 0
    for r in range(1, cfg.pseudo.rounds + 1):
        students = [manifest_path(models_dir(cfg, r) / n) for n in student_names(cfg)]
        if not round_paths(cfg, r)[1].is_file() or not all(p.is_file() for p in students):
            break
        done = r
    return done


# ----------------------------------------------------------------------------- plots


def plot_fold_scores(commit: Commit, path: Path, names: list[str], table: np.ndarray, metric: str) -> Path:
    """Grouped bars: table (M, K) `metric` of each model (M) on each fold (K)."""
    M, K = table.shape
    fig, ax = subplots(figsize=(max(5, 1.2 * K + 2), 3.5))
    width = 0.8 / M
    for i, name in enumerate(names):
        ax.bar(np.arange(K) + (i - (M - 1) / 2) * width, table[i], width, label=name)
    ax.set_xticks(np.arange(K), [f"fold{k}" for k in range(K)])
    ax.set_ylabel(metric)
    lo, hi = float(table.min()), float(table.max())
    ax.set_ylim(max(0.0, lo - 0.1 * (hi - lo + 0.05)), hi + 0.1 * (hi - lo + 0.05))
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{metric} per fold (OOF rows)")
    return save_figure(fig, path, commit)


def plot_reliability(commit: Commit, path: Path, curves: dict[str, dict]) -> Path:
    """Calibration curves: curves[name] = reliability(...) of that model or ensemble."""
    fig, ax = subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, c in curves.items():
        bold = name.startswith("[")
        ax.plot(c["predicted"], c["observed"], marker="o", markersize=3, linewidth=2.5 if bold else 1,
                label=f"{name} (ECE {c['ece']:.3f})")
    what = next(iter(curves.values()))["of"]   # class 1, top class or label (Task.calibration)
    ax.set_xlabel(f"mean P({what})")
    ax.set_ylabel("accuracy" if what == "top class" else f"share of {what} positives")
    ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("calibration on OOF")
    return save_figure(fig, path, commit)


def plot_rounds(commit: Commit, path: Path, overview: list[dict], metric: str) -> Path:
    """Left: pseudo rows per round; right: each student's and the ensemble's OOF (solid) and
    test (dashed, when labelled) `metric` per round."""
    fig, (left, right) = subplots(1, 2, figsize=(9, 3.5))
    rounds = [e["round"] for e in overview]
    left.bar(rounds, [e.get("rows", 0) for e in overview], color="tab:blue")
    left.set_xticks(rounds), left.set_xlabel("round"), left.set_ylabel("pseudo rows (all folds)")
    lines = {n: [e["models"][n] for e in overview] for n in overview[0]["models"]}
    lines[ensemble_label(overview)] = [e["ensemble"] for e in overview]
    for name, seq in lines.items():
        (line,) = right.plot(rounds, [s["oof"][metric] for s in seq], marker="o", label=f"{name} oof")
        if seq[0]["test"] is not None:
            right.plot(rounds, [s["test"].get(metric, np.nan) for s in seq], marker="x", linestyle="--",
                       color=line.get_color(), label=f"{name} test")
    right.set_xticks(rounds), right.set_xlabel("round"), right.set_ylabel(metric)
    right.legend(fontsize=7)
    fig.suptitle("pseudo-label rounds")
    fig.tight_layout()
    return save_figure(fig, path, commit)


# ----------------------------------------------------------------------------- page


def md_table(head: list[str], rows: list[list]) -> str:
    return format_table(head, rows, markdown=True)


def models_section(nums: dict, task: Task) -> str:
    has_test = nums["ensemble"]["test"] is not None
    keys, test_keys = list(task.table_keys), list(task.table_keys[:2]) if has_test else []
    head = ["model", "kind"] + [f"oof {k}" for k in keys] + [f"test {k}" for k in test_keys]
    entries = [(name, m["kind"], m) for name, m in nums["models"].items()]
    entries.append((f"[{nums['ensemble']['method']}]", "ensemble", nums["ensemble"]))
    rows = [[name, kind] + [m["oof"][k] for k in keys] + [m["test"][k] for k in test_keys] for name, kind, m in entries]
    note = task.score_note + (" Test scores use the labelled test file; no model was fitted on them."
                              if has_test else "")
    return "## Models\n\n" + note + "\n\n" + md_table(head, rows)


def folds_section(nums: dict) -> str:
    metric, K = nums["metric"], nums["n_splits"]
    head = ["model"] + [f"fold{k}" for k in range(K)] + ["mean", "std", "oof"]
    entries = {**{n: m for n, m in nums["models"].items()}, f"[{nums['ensemble']['method']}]": nums["ensemble"]}
    rows = [[n, *m["folds"], float(np.mean(m["folds"])), float(np.std(m["folds"])), m["oof"][metric]]
            for n, m in entries.items()]
    return (f"## {metric} per fold\n\nEach fold's held-out rows of oof.npy against their labels.\n\n"
            + md_table(head, rows) + "\n\n![per-fold scores](fold_scores.png)")


def correlation_section(nums: dict) -> str:
    names = list(nums["models"])
    rows = [[n, *map(float, r)] for n, r in zip(names, nums["correlation"])]
    return ("## OOF correlation\n\nPearson correlation of the models' OOF predictions (the probability of class 1 "
            "for binary tasks, the whole matrix otherwise): low correlation is what an ensemble gains from.\n\n"
            + md_table(["corr"] + names, rows) + "\n\n![OOF correlation](correlation.png)")


def calibration_section(nums: dict) -> str:
    entries = {**nums["models"], f"[{nums['ensemble']['method']}]": nums["ensemble"]}
    if any(m["calibration"] is None for m in entries.values()):
        return "## Calibration\n\nNot applicable: the predictions are values, not probabilities."
    rows = [[n, m["calibration"]["ece"], m["oof"]["logloss"]] for n, m in entries.items()]
    return (f"## Calibration\n\nOn the OOF rows, {N_BINS} equal-width bins; ECE is the count-weighted mean gap "
            "between predicted and observed.\n\n" + md_table(["model", "ECE", "oof logloss"], rows)
            + "\n\n![reliability curves](reliability.png)")


def pseudo_section(cfg: ExperimentConfig, overview: Optional[list[dict]]) -> str:
    head = "## Pseudo-label rounds\n\n"
    if not cfg.pseudo.enabled:
        return head + "Pseudo-labelling is off (pseudo.enabled=false)."
    if overview is None:
        return head + "No finished round: run `python -m pipeline.pseudo_label`."
    rows = [[e["round"], ", ".join(e["teachers"]), e["rows"],
             ", ".join(f"{c}: {n}" for c, n in e["per_class"].items()) or "-",
             e["label_accuracy"] if e["label_accuracy"] is not None else "-"] for e in overview[1:]]
    text = (head + "Round 0 is the students before pseudo labelling; round N trains them again with fold k's "
            "pseudo rows (chosen by fold k's round N-1 teachers) added to fold k's training part. OOF scores stay "
            "honest. Where the test file is labelled, test scores after round 0 are transductive (the students "
            "trained on test texts with predicted labels, never the true ones).\n\n"
            + md_table(["round", "teachers", "pseudo rows", "per class", "share correct"], rows)
            + "\n\n" + overview_table(overview, cfg.metric, markdown=True) + "\n\n![pseudo-label rounds](pseudo_rounds.png)")
    if finished_rounds(cfg) < cfg.pseudo.rounds:
        text += f"\n\nOnly {finished_rounds(cfg)} of pseudo.rounds={cfg.pseudo.rounds} rounds are finished."
    return text


def header(nums: dict, cfg: ExperimentConfig) -> str:
    where = models_dir(cfg, nums["round"])
    return (f"# Report: {nums['experiment']}\n\n"
            f"- task: {nums['task']}; metric: {nums['metric']}\n- rows: {nums['n_train']} train, {nums['n_test']} test; "
            f"{nums['columns']}: {', '.join(nums['classes'])}\n- folds: {nums['n_splits']}\n- models: {', '.join(nums['models'])} "
            f"(round {nums['round']}, {where})\n- ensemble: {nums['ensemble']['method']}")


def render(cfg: ExperimentConfig, nums: dict, overview: Optional[list[dict]]) -> str:
    task, e = get_task(cfg.task), nums["ensemble"]
    parts = [header(nums, cfg), models_section(nums, task), folds_section(nums), correlation_section(nums),
             task.diagnostics_section(e, e["method"], nums["classes"]), calibration_section(nums),
             pseudo_section(cfg, overview)]
    return "\n\n".join(parts) + "\n"


def draw(commit: Commit, out: Path, nums: dict, overview: Optional[list[dict]], ev: Evidence) -> list[Path]:
    names = list(nums["models"]) + [f"[{nums['ensemble']['method']}]"]
    entries = list(nums["models"].values()) + [nums["ensemble"]]
    paths = [plot_fold_scores(commit, out / "fold_scores.png", names, np.array([e["folds"] for e in entries]), nums["metric"]),
             plot_matrix(commit, out / "correlation.png", np.array(nums["correlation"]), names[:-1], names[:-1],
                         "OOF correlation", ".2f", "viridis", vmin=-1, vmax=1)]
    paths += ev.task.draw_diagnostics(commit, out, nums["ensemble"], ev.method, ev.classes, ev.y, ev.ens_oof)
    curves = {n: e["calibration"] for n, e in zip(names, entries)}
    if all(c is not None for c in curves.values()):
        paths.append(plot_reliability(commit, out / "reliability.png", curves))
    if overview is not None:
        paths.append(plot_rounds(commit, out / "pseudo_rounds.png", overview, nums["metric"]))
    return paths


def write_report(cfg: ExperimentConfig) -> Path:
    """Write the page, its numbers and its plots; return the page's path."""
    ev = gather(cfg)
    nums = numbers(ev)
    done = finished_rounds(cfg) if cfg.pseudo.enabled else 0
    overview = rounds_overview(cfg, done) if done else None
    out = reports_dir(cfg)
    with committed() as c:  # plots, numbers, config.yaml and the page: together or not at all
        draw(c, out, nums, overview, ev)
        c.write_json(out / "report.json", {**nums, "pseudo_rounds": overview})
        save_resolved(cfg, out, c)
        page = c.write_text(out / "report.md", render(cfg, nums, overview))
    return page


# ----------------------------------------------------------------------------- finished models alone (inspect_models)


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
            raise PipelineError(f"{path} and {manifest_path(m.path)} disagree on {key}: "
                                "these are not the rows the models were trained on")
