"""The artifact layout in one place: every path a stage reads or writes, the checks on the names
that become parts of those paths, the check that no output can land on an input, and the lock
that keeps two processes from writing one experiment at once.

    <paths.work>/<exp>/prepared/         preprocess
    <paths.work>/<exp>/folds.csv, .json  folds (+ config.yaml)
    <paths.work>/<exp>/pseudo/           pseudo_label's labels
    <paths.work>/<exp>/pretrained/<name>/ pretrain (a backbone folder + pretrain.json; resume/ while running)
    <paths.models>/<exp>/<model>/        train (round 0)
    <paths.models>/<exp>/rounds/r<N>/    pseudo_label's students (and their ensembles/)
    <paths.models>/<exp>/ensembles/      ensemble
    <paths.submissions>/<exp>[_<method>].csv
    <paths.reports>/<exp>/               report

Names (experiment, models) are identifiers, so a name can never climb out of its root, nest, or
take the place of another folder of the layout; `paths.*` are the only way to put outputs elsewhere.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import pandas as pd

from .artifacts import Matrices, check_agree, fingerprint_parts, load_model, mixed_versions, stale_reason
from .config import (BACKBONE_KEYS, PRETRAINED, config_hash, config_source, model_identity, pretrained_name,
                     pretrained_refs, to_dict)
from .data import VIEWS, Table, labels_from_json
from .errors import PipelineError, excerpt
from .io import read_json, sha256_file, sha256_strings
from .splits import data_signature

if TYPE_CHECKING:
    from .config import ExperimentConfig

log = logging.getLogger("pipeline.store")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = "1-64 characters: letters, digits, '_' and '-', starting with a letter or digit"
# Folders of models/<exp>/ that are not models: a model of that name would share them.
RESERVED_MODEL_NAMES = ("ensembles", "rounds")
METHODS = ("stack", "blend", "vote", "best", "select", "rank")


# ----------------------------------------------------------------------------- names


def check_name(key: str, value: object) -> str:
    """`value` if it is a valid experiment or model name, else one line naming `key`."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise PipelineError(f"config: {key}={excerpt(value)} is not a valid name ({NAME_RULE})")
    return value


def check_model_name(key: str, value: object) -> str:
    name = check_name(key, value)
    if name.lower() in RESERVED_MODEL_NAMES:
        raise PipelineError(f"config: {key}={name!r} is reserved for the layout of models/<exp>/ "
                            f"(reserved: {', '.join(RESERVED_MODEL_NAMES)})")
    return name


# ----------------------------------------------------------------------------- paths


def work_dir(cfg: "ExperimentConfig") -> Path:
    return Path(cfg.paths.work) / cfg.experiment


def prepared_dir(cfg: "ExperimentConfig") -> Path:
    return work_dir(cfg) / "prepared"


def folds_paths(cfg: "ExperimentConfig") -> tuple[Path, Path]:
    """(folds.csv, folds.json)."""
    return work_dir(cfg) / "folds.csv", work_dir(cfg) / "folds.json"


def pseudo_dir(cfg: "ExperimentConfig") -> Path:
    return work_dir(cfg) / "pseudo"


def round_paths(cfg: "ExperimentConfig", round_: int) -> tuple[Path, Path]:
    """(r<N>.csv, r<N>.json) of pseudo-label round N."""
    return pseudo_dir(cfg) / f"r{round_}.csv", pseudo_dir(cfg) / f"r{round_}.json"


def pretrained_root(cfg: "ExperimentConfig") -> Path:
    return work_dir(cfg) / "pretrained"


def pretrained_dir(cfg: "ExperimentConfig", name: str) -> Path:
    """The pretrain stage's backbone folder, what `backbone: pretrained:<name>` loads."""
    return pretrained_root(cfg) / name


def experiment_models_dir(cfg: "ExperimentConfig") -> Path:
    return Path(cfg.paths.models) / cfg.experiment


def models_dir(cfg: "ExperimentConfig", round_: int = 0) -> Path:
    base = experiment_models_dir(cfg)
    return base if round_ == 0 else base / "rounds" / f"r{round_}"


def model_dir(cfg: "ExperimentConfig", name: str, round_: int = 0) -> Path:
    return models_dir(cfg, round_) / name


def ensembles_dir(cfg: "ExperimentConfig", round_: int = 0) -> Path:
    return models_dir(cfg, round_) / "ensembles"


COMBINER = "combiner.json"


def combiner_path(ensembles: Path, method: str) -> Path:
    """<ensembles>/<method>/combiner.json: the fitted estimator and tuned threshold of a method."""
    return Path(ensembles) / method / COMBINER


def submission_path(cfg: "ExperimentConfig", method: Optional[str] = None) -> Path:
    """submissions/<exp>.csv (the submitted method) or submissions/<exp>_<method>.csv."""
    stem = cfg.experiment if method is None else f"{cfg.experiment}_{method}"
    return Path(cfg.paths.submissions) / f"{stem}.csv"


def reports_dir(cfg: "ExperimentConfig") -> Path:
    return Path(cfg.paths.reports) / cfg.experiment


def data_dir(cfg: "ExperimentConfig") -> Path:
    from .config import expand_env  # config imports this module for the name checks

    return Path(expand_env(cfg.data.dir, "data.dir"))


def input_files(cfg: "ExperimentConfig") -> dict[str, Path]:
    """Every file the stages read that the user owns: {config key: path}."""
    base = data_dir(cfg)
    out = {"data.train": base / cfg.data.train, "data.test": base / cfg.data.test}
    sample = getattr(cfg.data, "sample_submission", None)
    if sample:
        out["data.sample_submission"] = base / sample
    return out


# ----------------------------------------------------------------------------- outputs vs inputs


def owned_dirs(cfg: "ExperimentConfig") -> list[Path]:
    """Folders the pipeline writes anything into (and may replace files in)."""
    return [prepared_dir(cfg), pseudo_dir(cfg), pretrained_root(cfg), experiment_models_dir(cfg), reports_dir(cfg)]


def owned_files(cfg: "ExperimentConfig") -> list[Path]:
    """Single files the pipeline writes outside its owned folders."""
    csv_path, json_path = folds_paths(cfg)
    return ([csv_path, json_path, work_dir(cfg) / "config.yaml", submission_path(cfg)]
            + [submission_path(cfg, m) for m in METHODS])


def check_outputs_spare_inputs(cfg: "ExperimentConfig", config_path: Optional[Path]) -> None:
    """Refuse, before anything is written, a config under which some stage would write over or
    into the place of a file it reads (an input file, the config file itself)."""
    inputs = dict(input_files(cfg))
    if config_path is not None:
        inputs["the config file"] = Path(config_path)
    for key, path in inputs.items():
        for out in owned_files(cfg):
            if _same_file(path, out):
                raise PipelineError(f"config: an output ({out}) would replace {key} ({path}); "
                                    "change paths.* or the experiment name")
        for folder in owned_dirs(cfg):
            if _inside(path, folder):
                raise PipelineError(f"config: {key} ({path}) lies inside {folder}, which the pipeline writes; "
                                    "move the file or change paths.*")


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser().resolve(strict=False)))


def _same_file(a: Path, b: Path) -> bool:
    """Equal after resolving links, or the same inode (a hard link)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return _resolved(path).is_relative_to(_resolved(folder))


# ----------------------------------------------------------------------------- lock


@contextlib.contextmanager
def experiment_lock(cfg: "ExperimentConfig") -> Iterator[Path]:
    """Hold a lock on <paths.work>/<exp>/ for the block; a second process on the same experiment
    is refused with one line naming the holder's pid. The lock is an flock on the folder itself:
    no file is written for it, and the kernel drops it when its process dies, so a killed run
    never leaves a stale lock behind."""
    path = work_dir(cfg)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise PipelineError(f"cannot lock {path}: {e.strerror or e}") from None
    try:
        _take(fd, path, cfg.experiment)
        yield path
    finally:
        os.close(fd)  # closing releases the flock


def _take(fd: int, path: Path, experiment: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise PipelineError(f"cannot lock {path}: {e.strerror or e}") from None
        holder = _holder(fd) or "unknown"
        raise PipelineError(f"experiment {experiment!r} is in use by process {holder} (it holds a lock on "
                            f"{path}); wait for it to finish or stop it") from None


def _holder(fd: int) -> Optional[str]:
    """The pid holding an flock on the file of `fd`, from /proc/locks (Linux); None elsewhere."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and inode in fields and "->" not in fields:
            return fields[fields.index(inode) - 1]
    return None


def table_from_jsonl(name: str, path: Path) -> Table:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    pair = len(rows[0]["raw"]) == 2
    views = {v: ([r[v][0] for r in rows], [r[v][1] for r in rows] if pair else None) for v in VIEWS}
    y = None if rows[0]["y"] is None else labels_from_json([r["y"] for r in rows])
    groups = [r["group"] for r in rows] if "group" in rows[0] else None
    return Table(name, [r["id"] for r in rows], views, y, groups)


def source_fingerprint(cfg: ExperimentConfig) -> dict:
    """What the prepared files were made from: input files' hashes and the settings that matter."""
    base = data_dir(cfg)
    settings = {"task": cfg.task, "data": to_dict(cfg.data), "preprocess": to_dict(cfg.preprocess),
                "group_column": cfg.folds.group_column if cfg.folds.strategy == "group" else None}
    return {"train_file_sha256": sha256_file(_existing(base / cfg.data.train)),
            "test_file_sha256": sha256_file(_existing(base / cfg.data.test)),
            "settings_sha256": config_hash(settings)}


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise PipelineError(f"file not found: {path}")
    return path


def load_prepared(cfg: ExperimentConfig) -> tuple[Table, Table, dict]:
    """The prepared tables, refused if stale (inputs or settings changed) or tampered with."""
    d = prepared_dir(cfg)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise PipelineError(f"{meta_path} not found: run `python -m pipeline.preprocess` first")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
        raise PipelineError(f"{meta_path} is not a preprocess record: run `python -m pipeline.preprocess` again")
    now = source_fingerprint(cfg)
    for key, what in (("train_file_sha256", cfg.data.train), ("test_file_sha256", cfg.data.test),
                      ("settings_sha256", "the data/preprocess settings")):
        if meta.get(key) != now[key]:
            raise PipelineError(f"{meta_path} was made from another {what} than the current one: "
                                "run `python -m pipeline.preprocess` again")
    for name in ("train", "test"):
        if sha256_file(_existing(d / f"{name}.jsonl")) != meta.get(f"{name}_sha256"):
            raise PipelineError(f"{d / (name + '.jsonl')} does not match the hash in {meta_path}")
    train, test = table_from_jsonl("train", d / "train.jsonl"), table_from_jsonl("test", d / "test.jsonl")
    train.segmented = test.segmented = meta.get("segmenter", "none") != "none"
    return train, test, meta


def load_folds(cfg: ExperimentConfig, train: Table) -> tuple[np.ndarray, dict]:
    """(n_train,) int folds, refused when they were made for other rows, labels or settings."""
    csv_path, json_path = folds_paths(cfg)
    if not csv_path.is_file() or not json_path.is_file():
        raise PipelineError(f"{csv_path} not found: run `python -m pipeline.folds` first")
    info = read_json(json_path)
    if not isinstance(info, dict):
        raise PipelineError(f"{json_path} is not a folds record: run `python -m pipeline.folds --force`")
    if sha256_file(csv_path) != info.get("folds_csv_sha256"):
        raise PipelineError(f"{csv_path} does not match the hash in {json_path}")
    sig = data_signature(train, cfg)
    if any(info.get(k) != v for k, v in sig.items()):
        what = "groups" if info.get("groups_sha256") != sig.get("groups_sha256") else "rows or labels"
        raise PipelineError(f"{csv_path} was made for other train {what} than the prepared data: "
                            "run `python -m pipeline.folds` again")
    if info.get("folds_config") != to_dict(cfg.folds):
        raise PipelineError(f"{csv_path} was made with other fold settings than the config: "
                            "run `python -m pipeline.folds` again")
    df = pd.read_csv(csv_path, dtype={"id": str}, keep_default_na=False)
    if df["id"].tolist() != train.ids:
        raise PipelineError(f"{csv_path}: ids are not the train rows in train-file order")
    return df["fold"].to_numpy(dtype=np.int64), info


def load_models(cfg: ExperimentConfig, names: Optional[list[str]] = None, round_: int = 0) -> list[Matrices]:
    """Each model's matrices from round `round_`; a model that round did not retrain (not one of
    pseudo.retrain) comes from the latest earlier round that has it."""
    wanted = names if names is not None else [m.name for m in cfg.models]
    if not wanted:
        raise PipelineError("config: no models to combine (the models list is empty)")
    found = {n: latest_model_dir(cfg, n, round_) for n in wanted}
    missing = [n for n, d in found.items() if d is None]
    if missing:
        raise PipelineError(f"no finished matrices for {missing} under {models_dir(cfg, round_)}: "
                            "run the train stage first")
    return [load_model(found[n]) for n in wanted]


def latest_model_dir(cfg: ExperimentConfig, name: str, round_: int) -> Optional[Path]:
    for r in range(round_, -1, -1):
        if (models_dir(cfg, r) / name / "manifest.json").is_file():
            return models_dir(cfg, r) / name
    return None


# ----------------------------------------------------------------------------- pretrained backbones

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
    import dataclasses

    swap = {k: str(pretrained_dir(cfg, pretrained_name(getattr(params, k))))
            for k in keys if pretrained_name(getattr(params, k, None))}
    return dataclasses.replace(params, **swap) if swap else params


def check_current(cfg: ExperimentConfig, models: list[Matrices], meta: dict, folds_info: dict,
                  train: Table, test: Table) -> None:
    """Refuse a model whose matrices were made with other settings than the current config (its
    params, view or kind, the metric, the data, the folds, or its round's pseudo labels), naming
    what changed and the command that retrains it."""
    for m in models:
        r = int(m.manifest.get("round", 0))
        parts = fingerprint_parts(identity(cfg, cfg.model(m.name), train, test), meta["classes"], cfg.metric, meta,
                                  folds_info, r,
                                  pseudo_labels_sha256(cfg, r))
        reason = stale_reason(m.manifest, parts)
        if reason:
            again = (f"python -m pipeline.train {config_source(cfg)} --models {m.name}" if r == 0
                     else f"python -m pipeline.pseudo_label {config_source(cfg)}")
            raise PipelineError(f"model {m.name!r} ({m.path}) was trained with other settings than the config "
                                f"({reason}): run `{again}` to retrain it")


def pseudo_labels_sha256(cfg: ExperimentConfig, round_: int) -> Optional[str]:
    """The sha256 of round `round_`'s pseudo-label csv as its record states it (None for round 0
    or a round whose labels are gone)."""
    if round_ == 0:
        return None
    json_path = round_paths(cfg, round_)[1]
    record = read_json(json_path) if json_path.is_file() else {}
    return record.get("csv_sha256") if isinstance(record, dict) else None


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


def load_round(cfg: ExperimentConfig, round_: int) -> tuple[pd.DataFrame, dict]:
    """A round's pseudo labels and their record, refused when the csv does not match its json."""
    csv_path, json_path = round_paths(cfg, round_)
    info = read_json(json_path)
    if not csv_path.is_file() or sha256_file(csv_path) != info.get("csv_sha256"):
        raise PipelineError(f"{csv_path} does not match its sha256 in {json_path}: run the pseudo_label stage again")
    frame = pd.read_csv(csv_path, dtype={"test_id": str, "label": str, "voters": str}, keep_default_na=False)
    return frame, info


def check_ensemble_models(cfg: ExperimentConfig, summary_path: Path, summary: dict, models: list[Matrices]) -> None:
    """The ensemble's summary must list `models`, made from their current matrices with the
    current ensemble settings, or its matrices are another ensemble's."""
    from .ensembling import made_from  # ensembling reads matrices this module loads

    listed = sorted(summary.get("models", {}))
    if listed != sorted(m.name for m in models):
        raise PipelineError(f"{summary_path} combines {listed}, the config's models are "
                            f"{sorted(m.name for m in models)}: run `python -m pipeline.ensemble` again")
    now, then = made_from(cfg, models), summary.get("made_from") or {}
    changed = [n for n in now["matrices"] if (then.get("matrices") or {}).get(n) != now["matrices"][n]]
    if then.get("settings_sha256") != now["settings_sha256"] or changed:
        what = f"models {changed} were retrained since" if changed else "the ensemble settings changed since"
        raise PipelineError(f"{summary_path} is stale ({what}): run `python -m pipeline.ensemble "
                            f"{config_source(cfg)}` again")


def checked_summary(cfg: ExperimentConfig, models: list[Matrices]) -> tuple[Path, dict]:
    """(ensembles folder, its summary.json) of the config's round, refused when missing or when it
    was not made from `models`' current matrices and the current ensemble settings."""
    out = ensembles_dir(cfg, cfg.ensemble.round)
    path = out / "summary.json"
    if not path.is_file():
        raise PipelineError(f"{path} not found: run `python -m pipeline.ensemble` first")
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise PipelineError(f"{path} is not an ensemble summary: run `python -m pipeline.ensemble` again")
    check_ensemble_models(cfg, path, summary, models)
    return out, summary


def checked_ensemble_file(out: Path, summary: dict, name: str) -> Path:
    """<ensembles>/<name>, refused when missing or not matching its sha256 in summary.json."""
    path = Path(out) / name
    if not path.is_file():
        raise PipelineError(f"{path} not found: run `python -m pipeline.ensemble` first")
    if sha256_file(path) != (summary.get("files") or {}).get(name):
        raise PipelineError(f"{path} does not match its sha256 in {Path(out) / 'summary.json'}: "
                            "run `python -m pipeline.ensemble` again")
    return path
