"""Provenance: is what a stage is about to use made from what the config says? The one place
that decides a model's identity (its config, kind's save format, pretrained backbones) and refuses
stale or disagreeing matrices, for the train stage's skipping and for every reader alike.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from .artifacts import (MANIFEST, Matrices, check_agree, fingerprint_parts, load_model, mixed_versions,
                        stale_reason)
from .backbones import check_pretrained, pretrain_fingerprint, pretrain_record
from .config import ExperimentConfig, config_source, model_identity, pretrained_refs
from .data import Table
from .errors import PipelineError
from .fold_assignment import load_folds
from .fileio import sha256_strings
from .layout import folds_paths, models_dir
from .names import BACKBONE_KEYS
from .prepared import load_prepared
from .pseudo_labels import check_round, pseudo_labels_sha256

log = logging.getLogger("pipeline.store")


def identity(cfg: ExperimentConfig, m, train: Table, test: Table) -> dict:
    """A model's identity (config.model_identity) plus, for each pretrained backbone it names, the
    fingerprint of that pretrain, so the model is stale once the pretrain's settings or texts change.
    A local backbone folder holding a pretrain record adds the fingerprint recorded there."""
    out = model_identity(m)
    prints = {key: pretrain_fingerprint(cfg, train, test) for key, _ in pretrained_refs(m)}
    for key in BACKBONE_KEYS:
        value = m.params.get(key)
        if key not in prints and isinstance(value, str) and Path(value).is_dir():
            record = pretrain_record(Path(value))
            if record is not None:
                prints[key] = record["fingerprint"]
    if prints:
        out["pretrained"] = prints
    return out


def check_current(cfg: ExperimentConfig, models: list[Matrices], meta: dict, folds_info: dict,
                  train: Table, test: Table) -> None:
    """Refuse a model whose matrices were made with other settings than the current config (its
    params, view or kind, the metric, the data, the folds, or its round's pseudo labels), naming
    what changed and the command that retrains it; and one whose pretrained backbone on disk is no
    longer the one the config describes (its folds were fitted on another)."""
    for m in models:
        r = int(m.manifest.get("round", 0))
        check_pretrained(cfg, cfg.model(m.name), train, test)
        parts = fingerprint_parts(identity(cfg, cfg.model(m.name), train, test), meta["classes"], cfg.metric, meta,
                                  folds_info, r,
                                  pseudo_labels_sha256(cfg, r))
        reason = stale_reason(m.manifest, parts)
        if reason:
            again = (f"python -m pipeline.train {config_source(cfg)} --models {m.name}" if r == 0
                     else f"python -m pipeline.pseudo_label {config_source(cfg)}")
            raise PipelineError(f"model {m.name!r} ({m.path}) was trained with other settings than the config "
                                f"({reason}): run `{again}` to retrain it")


def load_models(cfg: ExperimentConfig, names: Optional[list[str]] = None, round_: int = 0) -> list[Matrices]:
    """Each model's matrices from round `round_`; a model that round did not retrain (not one of
    pseudo.retrain) comes from the latest earlier round that has it."""
    wanted = names if names is not None else [m.name for m in cfg.models]
    if not wanted:
        raise PipelineError("config: no models to combine (the models list is empty)")
    for r in range(1, round_ + 1):   # every round up to it made, under the config's pseudo settings
        check_round(cfg, r)
    found = {n: latest_model_dir(cfg, n, round_) for n in wanted}
    missing = [n for n, d in found.items() if d is None]
    if missing:
        raise PipelineError(f"no finished matrices for {missing} under {models_dir(cfg, round_)}: "
                            "run the train stage first")
    return [load_model(found[n]) for n in wanted]


def latest_model_dir(cfg: ExperimentConfig, name: str, round_: int) -> Optional[Path]:
    for r in range(round_, -1, -1):
        if (models_dir(cfg, r) / name / MANIFEST).is_file():
            return models_dir(cfg, r) / name
    return None


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
    check_current(cfg, models, meta, info, train, test)
    mixed = mixed_versions(models)
    if mixed:
        log.warning("matrices were made under different versions of: %s", ", ".join(mixed))
    return models, train, test, meta, folds
