"""The submitted ensemble as one predictor: every fold model of every member and the combiner,
loaded from formats that run no code after every check the ensemble stage and the report make,
predicting what the pipeline predicted (its probabilities for the test rows equal test.npy).
Used by the serve stage's HTTP app.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .artifacts import Matrices, fold_model_dirs, folds_intact
from .backbones import with_pretrained
from .combination import COMBINER, COMBINER_FORMAT, SUMMARY, checked_ensemble_file, checked_summary
from .combiners import estimators
from .config import ExperimentConfig, config_source, model_params
from .data import Table, whole
from .errors import PipelineError
from .fileio import read_json
from .models import registry
from .provenance import checked_models
from .tasks import Task, get as get_task
from .views import make_views, table_of


# ----------------------------------------------------------------------------- the loaded ensemble


@dataclass
class Member:
    """One model of the ensemble: folds[k] holds fold k's fitted models, one per seed."""
    name: str
    kind: str
    folds: list[list[Any]]


@dataclass
class Ensemble:
    """Everything a prediction needs, loaded and checked once."""
    cfg: ExperimentConfig
    task: Task
    method: str
    classes: list[str]
    members: list[Member]
    combiner: Any                       # an estimator of pipeline/combiners.py, rebuilt from its state
    threshold: Any                      # the tuned threshold / per-label thresholds / cut-points, or None
    views: Callable                     # texts -> {view: texts}, as preprocess made them
    is_pair: bool
    segmented: bool
    label_col: str
    summary: dict
    shared: dict = field(default_factory=dict)   # loaded sentence encoders, kept across batches


def load_ensemble(cfg: ExperimentConfig) -> Ensemble:
    """The submitted ensemble of the config's round, every check passed (PipelineError otherwise)."""
    models, _, _, meta, _ = checked_models(cfg, cfg.ensemble.models, cfg.ensemble.round)
    out, summary = checked_summary(cfg, models)
    method = summary.get("submitted")
    task = get_task(cfg.task)
    combiner, threshold = read_combiner(out, summary, method, models)
    _, seg, views = make_views(meta["lemmatizer"], meta["segmenter"], [])
    ens = Ensemble(cfg, task, method, meta["classes"], [load_member(cfg, m, task) for m in models], combiner,
                   threshold, views, bool(meta["is_pair"]), seg != "none", label_column(cfg), summary)
    predict(ens, warmup_table(ens))  # loads the sentence encoders; a model that cannot predict fails here
    return ens


def label_column(cfg: ExperimentConfig) -> str:
    """The submission's label column name (classification, regression)."""
    return cfg.data.label if isinstance(cfg.data.label, str) else "label"


def read_combiner(out, summary: dict, method: Any, models: list[Matrices]) -> tuple[Any, Any]:
    """(estimator rebuilt from <method>/combiner.json, tuned threshold), the file checked against
    its sha256 in summary.json and its members against the ensemble's models."""
    if not isinstance(method, str):
        raise PipelineError(f"{out / SUMMARY} names no submitted method: run `python -m pipeline.ensemble` again")
    path = checked_ensemble_file(out, summary, f"{method}/{COMBINER}")
    record = read_json(path)
    names = [m.name for m in models]
    if not isinstance(record, dict) or record.get("format") != COMBINER_FORMAT or record.get("models") != names:
        raise PipelineError(f"{path} is not the combiner of {names}: run `python -m pipeline.ensemble` again")
    cls = estimators().get(record.get("estimator"))
    if cls is None:
        raise PipelineError(f"{path}: unknown estimator {record.get('estimator')!r} "
                            f"(known: {', '.join(sorted(estimators()))})")
    return cls.from_state(record["state"]), record.get("threshold")


def load_member(cfg: ExperimentConfig, m: Matrices, task: Task) -> Member:
    """Every fold model of one member, after checking that each fold's files are the ones its
    matrices were assembled from."""
    if not folds_intact(m.path, m.manifest, m.manifest["config_sha256"]):
        raise PipelineError(f"model {m.name!r} ({m.path}): its fold files are missing or changed since its "
                            "matrices were made: retrain it")
    mc = cfg.model(m.name)
    kind, n = registry.kind(mc.kind), len(m.manifest["classes"])
    params = with_pretrained(cfg, model_params(mc))   # pretrained:<name> -> the pretrain stage's folder
    folds = []
    for k in range(m.manifest["n_splits"]):
        try:
            folds.append([kind.load(d, params, n, mc.view, task) for d in fold_model_dirs(m.path, k)])
        except PipelineError as e:  # e.g. saved before serving existed: the fingerprint alone does not retrain it
            raise PipelineError(f"model {m.name!r} fold {k} cannot be served ({e}): retrain it with `python -m "
                                f"pipeline.train {config_source(cfg)} --models {m.name} --force`") from None
    return Member(m.name, mc.kind, folds)


def warmup_table(ens: Ensemble) -> Table:
    texts = ["warm up"]
    return table_of("warmup", ["warmup"], texts, texts if ens.is_pair else None, ens.views, segmented=ens.segmented)


# ----------------------------------------------------------------------------- prediction


def batch_cache(ens: Ensemble) -> dict:
    """A cache for one batch: the loaded encoders only. Entries keyed by a table (token ids, pair
    features) must not outlive the batch: a later table may reuse a freed table's id."""
    return {k: v for k, v in ens.shared.items() if k[0] == "encoder"}


def member_prediction(member: Member, table: Table, cache: dict) -> np.ndarray:
    """(n, C) float32: per fold the mean over its seeds, then the mean over folds, in float32 as
    the driver assembles test.npy."""
    per_fold = []
    for models in member.folds:
        seeds = []
        for model in models:
            model.use_cache(cache)
            seeds.append(model.predict_proba(whole(table)).astype(np.float32))
        per_fold.append(np.mean(np.stack(seeds), axis=0).astype(np.float32))
    return np.stack(per_fold).mean(axis=0).astype(np.float32)


def predict(ens: Ensemble, table: Table) -> tuple[np.ndarray, list[np.ndarray]]:
    """(combined (n, C) float64 as the ensemble stage computes its test matrix, [member (n, C) float32])."""
    cache = batch_cache(ens)
    mats = [member_prediction(m, table, cache) for m in ens.members]
    ens.shared.update({k: v for k, v in cache.items() if k[0] == "encoder"})
    return np.asarray(ens.combiner.predict_proba(mats), dtype=np.float64), mats


def answer(ens: Ensemble, ids: list, combined: np.ndarray, mats: list[np.ndarray], members: bool) -> list[dict]:
    """One dict per row: id, label (as the submission writes it), probabilities or value (as test.npy
    holds it, float32), and with `members` each member's outputs."""
    decisions = ens.task.decide(combined, ens.threshold)
    columns = ens.task.submission(decisions, ens.classes, ens.label_col)
    labels = [{c: columns[c][i] for c in columns} for i in range(len(ids))]
    if len(columns) == 1:
        labels = [next(iter(row.values())) for row in labels]
    outputs = ens.task.served_outputs(combined.astype(np.float32), ens.classes)
    rows = [{"id": i, "label": lab, **out} for i, lab, out in zip(ids, labels, outputs)]
    if members:
        per_member = {m.name: ens.task.served_outputs(p, ens.classes) for m, p in zip(ens.members, mats)}
        for j, row in enumerate(rows):
            row["members"] = {name: outs[j] for name, outs in per_member.items()}
    return rows
