"""The one K-fold driver, for every model kind: plans the (model, fold, seed) jobs of a stage, hands
them to the configured executor (backends.py) with the job function, writes each job as it finishes and assembles each model.

For each model and fold k: fit on the other folds (plus fold k's pseudo rows and the model's
augmented rows, if any), predict the held-out fold and the test set, save them at once (resume
point); then assemble oof.npy, test_folds.npy, test.npy and manifest.json. A seed bag (`seeds:`
with more than one seed) fits each fold once per seed s (with seed s + k) into fold<k>/seed<s>/,
and fold<k>'s own predictions are the means over its seeds. Finished jobs, folds and models are
skipped on rerun. Used by the train stage and by each pseudo-label round.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import artifacts, backends, faults
from .artifacts import adopt_fold, fold_dir, load_fold, manifest_path, save_fold, seed_dir, write_model
from .augment import augment_split
from .backbones import check_pretrained, with_pretrained
from .config import ExperimentConfig, ModelConfig, backbone_refs, config_yaml, model_params
from .data import Split, Table, whole
from .errors import PipelineError
from .fold_assignment import load_folds
from .fileio import read_json, sha256_strings, write_bytes
from .layout import models_dir
from .models import registry
from .models.base import FitContext
from .names import pretrained_name
from .prepared import load_prepared
from .provenance import identity
from .tasks import Task, get as get_task
from .views import recorded_views

log = logging.getLogger("pipeline.train")

# fold k -> (rows (s,) of the test table, labels (s,), weights (s,) or None): fold k's
# pseudo-labelled test rows (soft labels: a row once per class, weighted by its probability; None:
# weight 1). Plain arrays, so a Run can go to a Ray cluster's object store as it is.
ExtraRows = dict[int, tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]


@dataclass
class Run:
    """Everything the driver needs that does not depend on the model."""
    cfg: ExperimentConfig
    train: Table
    test: Table
    classes: list[str]                    # names of the output columns (classes, target, labels)
    folds: np.ndarray                     # (n_train,) fold of each row
    folds_info: dict
    prepared_meta: dict
    round: int = 0
    extra: Optional[ExtraRows] = None
    extra_sha256: Optional[str] = None    # hash of the pseudo labels, part of the fingerprint
    cache: dict = field(default_factory=dict)

    @property
    def n_splits(self) -> int:
        return int(self.folds.max()) + 1

    @property
    def task(self) -> Task:
        return get_task(self.cfg.task)


def open_run(cfg: ExperimentConfig) -> Run:
    train, test, meta = load_prepared(cfg)
    folds, info = load_folds(cfg, train)
    return Run(cfg, train, test, meta["classes"], folds, info, meta)


def fingerprint(run: Run, m: ModelConfig) -> str:
    """Changes whenever anything that shapes this model's predictions changes (a pretrained
    backbone's settings and texts included: provenance.identity)."""
    model = identity(run.cfg, m, run.train, run.test)
    return artifacts.fingerprint(artifacts.fingerprint_parts(model, run.classes, run.cfg.metric, run.prepared_meta,
                                                             run.folds_info, run.round, run.extra_sha256))


def seed_fingerprint(run: Run, m: ModelConfig, seed: int) -> str:
    """The fingerprint of one seed of a bag: the one the model would have with `seed` alone, so a
    seed's finished folds are reused when seeds are added to or dropped from the bag."""
    return fingerprint(run, dataclasses.replace(m, seed=seed, seeds=None))


def training_split(run: Run, m: ModelConfig, k: int, seed: int) -> tuple[Split, Split]:
    """fold_splits with the model's augmented rows (seeded by `seed`, its seed + k) added to the
    training part only."""
    tr, va = fold_splits(run, k)
    if m.augment.active:
        views = run.cache.setdefault(("views",), recorded_views(run.prepared_meta))
        augment = with_pretrained(run.cfg, m.augment, keys=("mlm_backbone",))
        tr = augment_split(tr, augment, seed, views, name=f"augmented-fold{k}-seed{seed}")
    return tr, va


def fold_splits(run: Run, k: int) -> tuple[Split, Split]:
    """Fold k's training rows (other folds + its pseudo rows) and its held-out rows. With weighted
    pseudo rows the training part's sample_weight (n_train + s,) is 1 for train rows; else None."""
    tr = np.flatnonzero(run.folds != k)
    va = np.flatnonzero(run.folds == k)
    train = Split([(run.train, tr)], run.train.y[tr], name=f"fold{k}-train")
    rows, labels, weights = (run.extra or {}).get(k, (None, None, None))
    if rows is not None and len(rows):
        w = None if weights is None else np.concatenate([np.ones(len(tr)), weights])
        train = Split(train.parts + [(run.test, rows)], np.concatenate([train.y, labels.astype(train.y.dtype)]),
                      name=train.name, sample_weight=w)
    return train, Split([(run.train, va)], run.train.y[va], name=f"fold{k}-valid")


def check_proba(p: np.ndarray, n: int, n_classes: int, what: str) -> np.ndarray:
    if p.shape != (n, n_classes):
        raise PipelineError(f"{what}: predictions of shape {p.shape}, expected {(n, n_classes)}")
    if not np.isfinite(p).all():
        raise PipelineError(f"{what}: non-finite predictions; nothing of this fold was written")
    return p.astype(np.float32)


def fit_fold(run: Run, m: ModelConfig, k: int, out: Path, threads: Optional[int] = None,
             seed: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit model `m` on fold k with seed + k (seed: one of a bag, None: the model's seed); return
    (val_pred (n_val, C), test_pred (n_test, C), record).

    threads: the job's CPU share on a cluster (torch and LightGBM threads); None keeps the params'."""
    label = f"{m.name} fold {k + 1}/{run.n_splits}" + ("" if seed is None else f" seed {seed}")
    seed = int(m.seed if seed is None else seed) + k
    tr, va = training_split(run, m, k, seed)
    n_classes, task = len(run.classes), run.task
    ctx = FitContext(n_classes=n_classes, seed=seed, fold=k, out_dir=out,
                     score=lambda y, p: task.score(run.cfg.metric, y, p), cache=run.cache,
                     label=label, task=task, metric=run.cfg.metric)
    params = with_pretrained(run.cfg, with_threads(model_params(m), threads))
    model = registry.kind(m.kind).build(params, n_classes, m.view)
    start = time.perf_counter()
    model.fit(tr, va, ctx)
    fit_s = time.perf_counter() - start
    val_pred = check_proba(model.predict_proba(va), len(va), n_classes, f"{m.name} fold {k}")
    test_pred = check_proba(model.predict_proba(whole(run.test)), len(run.test), n_classes, f"{m.name} fold {k}")
    saved = model.save(out) or []
    record = {"fold": k, "n_train": len(tr), "n_valid": len(va), "fit_seconds": round(fit_s, 3),
              "seconds": round(time.perf_counter() - start, 3), "scores": task.scores(va.y, val_pred),
              "info": getattr(model, "info_", {}), "extra_files": [Path(p).name for p in saved]}
    return val_pred, test_pred, record


def with_threads(params, threads: Optional[int]):
    """The params with their thread counts (LightGBM's n_jobs, torch's num_threads) set to
    `threads`; a job's threads never enter the fingerprint, which is made from the config."""
    if threads is None:
        return params
    keys = [k for k in ("n_jobs", "num_threads") if hasattr(params, k)]
    return dataclasses.replace(params, **{k: int(threads) for k in keys})


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True, eq=False)  # identity: a plan holds each job once
class Job:
    """One unfinished (model, fold, seed): plain data, so it can run in another process or node.
    seed None: the model's only seed (no bag), written to fold<k>/ itself; else fold<k>/seed<s>/."""
    model: ModelConfig
    fold: int
    fingerprint: str
    expected_seconds: float = 0.0
    seed: Optional[int] = None

    @property
    def part(self) -> str:
        return f"fold {self.fold}" + ("" if self.seed is None else f" seed {self.seed}")

    @property
    def label(self) -> str:
        return f"{self.model.name} {self.part}"


def job_dir(run: Run, job: Job) -> Path:
    """Where a job's files go: fold<k>/, or fold<k>/seed<s>/ for one seed of a bag."""
    out = fold_dir(models_dir(run.cfg, run.round) / job.model.name, job.fold)
    return out if job.seed is None else seed_dir(out, job.seed)


@dataclass
class JobResult:
    """val_pred (n_val, C), test_pred (n_test, C), the fold record, and the files the model saved
    ({name: bytes}; empty when the job saved them in the fold folder itself)."""
    val_pred: np.ndarray
    test_pred: np.ndarray
    record: dict
    files: dict = field(default_factory=dict)


def run_job(run: Run, job: Job, out: Path, threads: Optional[int] = None) -> JobResult:
    """Fit one (model, fold) or (model, fold, seed) job, saving the model's files in `out`."""
    faults.point(f"job:{job.model.name}/fold{job.fold}" + ("" if job.seed is None else f"/seed{job.seed}"))
    val_pred, test_pred, record = fit_fold(run, job.model, job.fold, out, threads, job.seed)
    if job.seed is not None:
        record["seed"] = job.seed
    return JobResult(val_pred, test_pred, record)


def commit_fold(run: Run, job: Job, result: JobResult) -> None:
    """Write a finished job into models/<exp>/<model>/fold<k>/ (fold<k>/seed<s>/ for a seed of a
    bag): its saved files, then the matrices and record, on the driver, whichever backend ran it."""
    out = job_dir(run, job)
    for name, data in result.files.items():
        write_bytes(out / name, data)
    save_fold(out, result.val_pred, result.test_pred, {**result.record, "fingerprint": job.fingerprint})
    name = job.model.name if job.seed is None else f"{job.model.name} seed {job.seed}"
    _log_fold(name, job.fold, run.n_splits, result.record, run.task.table(run.cfg.metric))


def commit_bag(run: Run, m: ModelConfig, k: int) -> None:
    """fold<k>/ of a seed bag from its seeds' finished folds: val and test predictions are the means
    over the seeds; the record lists the seeds, each seed's scores, and every seed file's sha256
    (so the fold verifies its seeds too)."""
    out = fold_dir(models_dir(run.cfg, run.round) / m.name, k)
    done = [load_fold(seed_dir(out, s), seed_fingerprint(run, m, s)) for s in m.seeds]
    if any(d is None for d in done):
        raise PipelineError(f"{out}: a seed of the bag is not finished after its job ran: run the train stage again")
    val_pred = np.mean([d[0] for d in done], axis=0)
    test_pred = np.mean([d[1] for d in done], axis=0)
    records = [d[2] for d in done]
    va = run.train.y[run.folds == k]
    files = [f"seed{s}/{name}" for s, r in zip(m.seeds, records) for name in [*r["files"], "fold.json"]]
    record = {"fold": k, "seeds": list(m.seeds), "n_train": records[0]["n_train"], "n_valid": records[0]["n_valid"],
              "fit_seconds": round(sum(r["fit_seconds"] for r in records), 3),
              "seconds": round(sum(r["seconds"] for r in records), 3), "scores": run.task.scores(va, val_pred),
              "seed_scores": {str(s): r["scores"] for s, r in zip(m.seeds, records)},
              "info": {"seeds": {str(s): r.get("info", {}) for s, r in zip(m.seeds, records)}},
              "extra_files": files, "fingerprint": fingerprint(run, m)}
    save_fold(out, val_pred, test_pred, record)
    _log_fold(f"{m.name} (mean of {len(m.seeds)} seeds)", k, run.n_splits, record, run.task.table(run.cfg.metric))


def expected_seconds(model_dir: Path, m: ModelConfig) -> float:
    """A fold's expected time: the mean of this model's earlier fold timings where a manifest
    holds them, else the kind's (registry.Kind.expected_seconds)."""
    try:
        seconds = read_json(manifest_path(model_dir))["timings"]["fold_seconds"]
        return float(np.mean(seconds))
    except (PipelineError, KeyError, TypeError, ValueError):
        return registry.kind(m.kind).expected_seconds


def plan_model(run: Run, m: ModelConfig, force: bool) -> Optional[list[Job]]:
    """The jobs of one model's unfinished folds (of a bag: its unfinished (fold, seed) pairs);
    None when the whole model is up to date."""
    model_dir = models_dir(run.cfg, run.round) / m.name
    fp = fingerprint(run, m)
    if not force and _up_to_date(model_dir, fp):
        log.info("%s: up to date, skipped (--force retrains)", m.name)
        return None
    check_pretrained(run.cfg, m, run.train, run.test)
    check_backbones(m)
    jobs = []
    for k in range(run.n_splits):
        if not force and load_fold(fold_dir(model_dir, k), fp) is not None:
            log.info("%s fold %d/%d: finished earlier, reused", m.name, k + 1, run.n_splits)
        elif m.seeds is None:
            jobs.append(Job(m, k, fp, expected_seconds(model_dir, m)))
        else:
            jobs += _bag_jobs(run, m, k, force, expected_seconds(model_dir, m))
    return jobs


def check_backbones(m: ModelConfig) -> None:
    """Every backbone the model names by a name or folder (params.backbone, params.embed,
    augment.mlm_backbone) can load here: checked for every model before any job runs."""
    used = [v for k, v in backbone_refs(m) if k != "augment.mlm_backbone" or m.augment.active]
    names = [n for n in used if isinstance(n, str) and pretrained_name(n) is None]
    if names:
        from .models.backbone import check_available  # torch loads only for models that use it

        for name in names:
            try:
                check_available(name)
            except PipelineError as e:
                raise PipelineError(f"model {m.name!r}: {e}") from None


def _bag_jobs(run: Run, m: ModelConfig, k: int, force: bool, seconds: float) -> list[Job]:
    """Fold k's jobs of a seed bag: one per seed whose fold<k>/seed<s>/ is not finished."""
    jobs = []
    fold = fold_dir(models_dir(run.cfg, run.round) / m.name, k)
    for s in m.seeds:
        fp = seed_fingerprint(run, m, s)
        if not force and load_fold(seed_dir(fold, s), fp) is not None:
            log.info("%s fold %d/%d seed %d: finished earlier, reused", m.name, k + 1, run.n_splits, s)
        elif not force and adopt_fold(fold, seed_dir(fold, s), fp, s):
            # the model was plain with `seed: s` before it became a bag: its fold is this seed's
            log.info("%s fold %d/%d seed %d: the plain model's fold, reused", m.name, k + 1, run.n_splits, s)
        else:
            jobs.append(Job(m, k, fp, seconds / len(m.seeds), seed=s))
    return jobs


def train_models(run: Run, models: list[ModelConfig], force: bool = False) -> dict[str, dict]:
    """The stage's one plan: every unfinished (model, fold[, seed]) job of every model, run by the
    configured executor; each fold is written as it finishes and each model assembled (matrices
    and manifest) as soon as its last fold is in. Returns {model: manifest}."""
    plans = {m.name: plan_model(run, m, force) for m in models}
    out = {m.name: read_json(manifest_path(models_dir(run.cfg, run.round) / m.name))
           for m in models if plans[m.name] is None}
    left = {(job.model.name, job.fold): 0 for jobs in plans.values() for job in jobs or []}
    for job in (job for jobs in plans.values() for job in jobs or []):
        left[(job.model.name, job.fold)] += 1
    for m in models:
        if plans[m.name] is not None:  # bag folds whose seeds all finished earlier: only the mean is missing
            _commit_finished_bags(run, m, {k for name, k in left if name == m.name})
        if plans[m.name] == []:  # every fold finished earlier: only the assembly is missing
            out[m.name] = assemble(run, m)
    by_name = {m.name: m for m in models}

    def done(job: Job, result: JobResult) -> None:
        commit_fold(run, job, result)
        left[(job.model.name, job.fold)] -= 1
        if left[(job.model.name, job.fold)] == 0:
            del left[(job.model.name, job.fold)]
            if job.seed is not None:
                commit_bag(run, job.model, job.fold)
            if not any(name == job.model.name for name, _ in left):
                out[job.model.name] = assemble(run, by_name[job.model.name])

    jobs = [job for m in models for job in plans[m.name] or []]
    if jobs:
        executor = backends.executor_class(run.cfg.execution.backend)(run.cfg.execution)
        executor.run(run, jobs, run_job, job_dir, done)
    return {m.name: out[m.name] for m in models}


def _commit_finished_bags(run: Run, m: ModelConfig, pending: set[int]) -> None:
    """The means of a bag's folds that have no job left to run but no fold record of this bag yet
    (e.g. a seed was dropped from the bag, or the run died between its last seed and the mean)."""
    model_dir = models_dir(run.cfg, run.round) / m.name
    for k in range(run.n_splits if m.seeds is not None else 0):
        if k not in pending and load_fold(fold_dir(model_dir, k), fingerprint(run, m)) is None:
            commit_bag(run, m, k)


def train_model(run: Run, m: ModelConfig, force: bool = False) -> dict:
    """Every fold of one model (skipping finished ones), then its matrices + manifest."""
    return train_models(run, [m], force)[m.name]


def assemble(run: Run, m: ModelConfig) -> dict:
    """oof.npy, test_folds.npy, test.npy and manifest.json from the model's finished folds."""
    model_dir = models_dir(run.cfg, run.round) / m.name
    fp = fingerprint(run, m)
    n, n_classes, K = len(run.train), len(run.classes), run.n_splits
    oof = np.zeros((n, n_classes), dtype=np.float32)
    count = np.zeros(n, dtype=np.int64)
    test_folds = np.zeros((K, len(run.test), n_classes), dtype=np.float32)
    records = []
    for k in range(K):
        done = load_fold(fold_dir(model_dir, k), fp)
        if done is None:
            raise PipelineError(f"{fold_dir(model_dir, k)} is not finished after its job ran: run the train stage again")
        val_pred, test_pred, record = done
        rows = np.flatnonzero(run.folds == k)
        oof[rows] = val_pred
        count[rows] += 1
        test_folds[k] = test_pred
        records.append(record)
    if not (count == 1).all():
        raise AssertionError(f"{m.name}: OOF rows predicted {sorted(set(count.tolist()))} times, expected once")
    manifest = build_manifest(run, m, fp, oof, records)
    manifest = write_model(model_dir, oof, test_folds, manifest, config_yaml(run.cfg))
    _log_model(m.name, manifest, run.task.table(run.cfg.metric))
    return manifest


def build_manifest(run: Run, m: ModelConfig, fp: str, oof: np.ndarray, records: list[dict]) -> dict:
    return {
        "model": m.name, "kind": m.kind, "config": identity(run.cfg, m, run.train, run.test), "config_sha256": fp,
        "round": run.round,
        "experiment": run.cfg.experiment, "metric": run.cfg.metric,
        "task": run.task.name, "columns": run.task.outputs,
        "classes": run.classes, "n_classes": len(run.classes), "n_train": len(run.train),
        "n_test": len(run.test), "n_splits": run.n_splits,
        "train_ids_sha256": run.folds_info["ids_sha256"], "labels_sha256": run.folds_info["labels_sha256"],
        "test_ids_sha256": sha256_strings(run.test.ids), "folds_csv_sha256": run.folds_info["folds_csv_sha256"],
        "pseudo_labels_sha256": run.extra_sha256,
        "prepared_train_sha256": run.prepared_meta["train_sha256"],
        "prepared_test_sha256": run.prepared_meta["test_sha256"],
        "fold_scores": [r["scores"] for r in records], "oof_scores": run.task.scores(run.train.y, oof),
        "timings": {"fold_seconds": [r["seconds"] for r in records],
                    "total_seconds": round(sum(r["seconds"] for r in records), 3)},
        "fold_info": [r.get("info", {}) for r in records],
        **({"seeds": list(m.seeds)} if m.seeds is not None else {}),
    }


def _up_to_date(model_dir: Path, fp: str) -> bool:
    """The model's matrices verify against its manifest, were made with this fingerprint, and every
    file of every fold (records, matrices, checkpoints) is still there with its sha256."""
    if not manifest_path(model_dir).is_file():
        return False
    try:
        manifest = artifacts.load_model(model_dir).manifest
    except PipelineError:
        return False
    return manifest.get("config_sha256") == fp and artifacts.folds_intact(model_dir, manifest, fp)


def _log_fold(name: str, k: int, K: int, rec: dict, keys: list[str]) -> None:
    s = rec["scores"]
    extra = "".join(f" {key} {v}" for key, v in rec.get("info", {}).items() if key in ("best_epoch", "samples_per_s"))
    node = f" on {rec['node']}" if rec.get("resources") else ""  # named where a cluster ran it
    log.info("%s fold %d/%d: %s (%.1fs%s)%s", name, k + 1, K, _fmt_scores(s, keys), rec["seconds"], node, extra)


def _log_model(name: str, manifest: dict, keys: list[str]) -> None:
    s = manifest["oof_scores"]
    log.info("%s OOF: %s", name, _fmt_scores(s, keys))


def _fmt_scores(s: dict, keys: list[str]) -> str:
    """keys: the task's table keys (Task.table: the metric is among them)."""
    return ", ".join(f"{k} {s[k]:.4f}" for k in keys if k in s)
