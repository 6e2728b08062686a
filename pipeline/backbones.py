"""Pretrained backbones: the pretrain stage's artifact (a backbone folder that models name as
`pretrained:<name>`), its fingerprint, its checked reader, and the run that writes it.

    <paths.work>/<exp>/pretrained/<name>/   model.safetensors, config.json, tokenizer files, the
                                            MLM head, config.yaml, and pretrain.json (written last:
                                            the commit marker, with every file's sha256)
    <paths.work>/<exp>/pretrained/<name>/resume/   the latest checkpoint of an unfinished run
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from .config import ExperimentConfig, config_hash, config_source, config_yaml, pretrained_refs
from .data import Table
from .errors import PipelineError
from .fileio import read_json, sha256_file, sha256_strings
from .layout import pretrained_dir
from .names import BACKBONE_KEYS, PRETRAINED, pretrained_name

log = logging.getLogger("pipeline.pretrain")
PRETRAIN_RECORD = "pretrain.json"   # written last: the commit marker of a finished pretrain


def pretrain_texts(cfg: ExperimentConfig, train: Table, test: Table) -> list[str]:
    """Every distinct text of the train and test tables in pretrain.view (text_a and text_b as
    separate sentences), in first-seen order. Labels are never read."""
    seen: dict[str, None] = {}
    for table in (train, test):
        a, b = table.views[cfg.pretrain.view]
        for text in a + (b or []):
            if text.strip():
                seen.setdefault(text, None)
    return list(seen)


def pretrain_fingerprint(cfg: ExperimentConfig, train: Table, test: Table) -> str:
    """What the pretrained weights are made from: the pretrain settings (base backbone included)
    and the texts; a model on `pretrained:<name>` carries it in its identity."""
    return config_hash({"settings": cfg.pretrain.identity(),
                        "texts_sha256": sha256_strings(pretrain_texts(cfg, train, test))})


def pretrain_record(directory: Path) -> Optional[dict]:
    """The record of a finished pretrain in `directory`, or None (absent, unfinished, unreadable)."""
    path = Path(directory) / PRETRAIN_RECORD
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except PipelineError:
        return None
    return record if isinstance(record, dict) and "fingerprint" in record else None


def pretrain_current(directory: Path, fingerprint: str) -> bool:
    """A finished pretrain with this fingerprint whose files all match their sha256."""
    record = pretrain_record(directory)
    if record is None or record.get("fingerprint") != fingerprint:
        return False
    files = record.get("files", {})
    return all((Path(directory) / n).is_file() and sha256_file(Path(directory) / n) == h for n, h in files.items())


def check_pretrained(cfg: ExperimentConfig, m, train: Table, test: Table) -> None:
    """Refuse to train model `m` on a pretrained backbone that is missing or was made with other
    settings or texts than the config's pretrain section."""
    for key, name in pretrained_refs(m):
        d = pretrained_dir(cfg, name)
        if not pretrain_current(d, pretrain_fingerprint(cfg, train, test)):
            state = "not finished" if pretrain_record(d) is None else "made with other settings or texts"
            raise PipelineError(f"model {m.name!r}: params.{key}={PRETRAINED}{name} but {d} is {state}: "
                                f"run `python -m pipeline.pretrain {config_source(cfg)}` first")


def with_pretrained(cfg: ExperimentConfig, params, keys: tuple[str, ...] = BACKBONE_KEYS):
    """The params (or augment config) with every `pretrained:<name>` backbone among `keys` replaced
    by its folder."""
    swap = {k: str(pretrained_dir(cfg, pretrained_name(getattr(params, k))))
            for k in keys if pretrained_name(getattr(params, k, None))}
    return dataclasses.replace(params, **swap) if swap else params


def pretrain(cfg: ExperimentConfig, train: Table, test: Table, force: bool = False,
             progress: bool = False) -> Optional[dict]:
    """Pretrain the config's backbone on the prepared texts into its folder, resuming an
    interrupted run; None when a finished pretrain with the same fingerprint is there (and not
    `force`). Returns the record written as pretrain.json."""
    from .models import mlm_training  # torch loads only when a pretrain runs

    texts = pretrain_texts(cfg, train, test)
    if not texts:
        raise PipelineError(f"pretrain: no text in view {cfg.pretrain.view!r} of the prepared train and test files")
    fingerprint = pretrain_fingerprint(cfg, train, test)
    out = pretrained_dir(cfg, cfg.pretrain.name)
    if not force and pretrain_current(out, fingerprint):
        log.info("pretrain %s: up to date in %s, skipped (--force pretrains again)", cfg.pretrain.name, out)
        return None
    if force:
        mlm_training.drop_checkpoint(out)
    return mlm_training.run(cfg.pretrain, texts, out, fingerprint, config_yaml(cfg), record_name=PRETRAIN_RECORD,
                            progress=progress)
