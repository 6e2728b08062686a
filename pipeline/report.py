"""Report stage: scores per model and fold, model correlation, the ensemble's confusion matrix,
calibration and the pseudo-label rounds, as a Markdown page with PNG plots.

    python -m pipeline.report [config.yaml] [key=value ...]

Writes reports/<exp>/report.md, report.json (the page's numbers), config.yaml and fold_scores.png,
correlation.png, confusion.png, reliability.png, pseudo_rounds.png (when pseudo-labelling ran).
The models are ensemble.round's (ensemble.models, default all); the ensemble is ensemble.submit's
output under models/<exp>/.../ensembles/. Every number is recomputed from the .npy matrices, the
labels and folds.csv after the manifests were checked; none is read from a log.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import cli
from .artifacts import Matrices
from .config import ExperimentConfig
from .errors import PipelineError
from .io import Commit, committed, read_npy
from .metrics import oof_correlation
from .plots import plot_matrix, save_figure, subplots
from .rounds import ensemble_label, overview_table, rounds_overview, student_names
from .store import checked_ensemble_file, checked_models, checked_summary, models_dir, reports_dir, round_paths
from .formatting import format_table
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
        students = [models_dir(cfg, r) / n / "manifest.json" for n in student_names(cfg)]
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
            right.plot(rounds, [s["test"][metric] for s in seq], marker="x", linestyle="--",
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


def run_report(cfg: ExperimentConfig) -> Path:
    """Write the page, its numbers and its plots; return the page's path."""
    ev = gather(cfg)
    nums = numbers(ev)
    done = finished_rounds(cfg) if cfg.pseudo.enabled else 0
    overview = rounds_overview(cfg, done) if done else None
    out = reports_dir(cfg)
    with committed() as c:  # plots, numbers, config.yaml and the page: together or not at all
        draw(c, out, nums, overview, ev)
        c.write_json(out / "report.json", {**nums, "pseudo_rounds": overview})
        cli.save_resolved(cfg, out, c)
        page = c.write_text(out / "report.md", render(cfg, nums, overview))
    return page


def main(argv: Optional[list[str]] = None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg = cli.load(args)
    page = run_report(cfg)
    print(f"report: {page} (+ plots in {page.parent})")
    return 0


if __name__ == "__main__":
    cli.run(main)
