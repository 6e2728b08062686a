"""Experiment configuration: typed dataclasses with defaults, a YAML file on top, then
`key=value` command-line overrides (dotted paths; list items of `models` by name).

Unknown keys and wrong types raise PipelineError naming the dotted key and what was expected.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import json
import os
import re
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union


import yaml

from . import backends, views
from .data import Column
from .errors import InvalidValue, PipelineError, excerpt
from .models import registry
from .models.params import TransformerParams
from .names import (BACKBONE_KEYS, METHODS, PRETRAINED, check_experiment_name, check_model_name, check_name,
                    pretrained_name)
from .tasks import get as get_task
from .yamlio import load_yaml, load_yaml_value, read_config_text




# Where a section names models (ensemble.models, pseudo.models, pseudo.retrain): model names, or a
# group by where a model's kind runs (registry.Kind.accelerator), which stays valid whatever models
# the config lists; resolved to names when the config is loaded (select_models).
Selection = Union[list[str], Literal[registry.ACCELERATORS]]


@dataclass
class DataConfig:
    dir: str = "data/demo"          # ${VAR} is expanded, so `${MRPC_DIR}` works
    train: str = "train.csv"
    test: str = "test.csv"
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = "auto"
    header: bool = True             # false: columns are named by position (text_a: 3)
    sep: Optional[str] = None       # None: by format (',' for CSV, tab for TSV)
    encoding: str = "utf-8"
    id: Optional[Column] = None     # None: a conventional id column of the test file, else row number
    text_a: Column = "text_a"
    text_b: Optional[Column] = None  # None: single-text task
    label: Union[Column, list[Column]] = "label"   # a list: the 0/1 columns of a multilabel task
    test_id: Optional[Column] = None   # defaults to `id`
    test_label: Optional[Union[Column, list[Column]]] = None  # labelled test files: used for scoring only
    sample_submission: Optional[str] = None  # file in `dir`: the submission takes its columns and id order
    on_empty_text: Literal["error", "empty"] = "error"
    max_train_rows: Optional[int] = None  # quick runs: keep the first N rows (N >= 1)
    max_test_rows: Optional[int] = None

    def __post_init__(self):
        for key in ("max_train_rows", "max_test_rows"):
            require(self, key, lambda v: v is None or v >= 1, "at least 1 (or null: every row)")
        require(self, "sep", lambda v: v is None or len(v) == 1, "one character (or null: by format)")


@dataclass
class FoldsConfig:
    n_splits: int = 5
    strategy: Literal["stratified", "group", "auto_group"] = "stratified"
    group_column: Optional[str] = None
    seed: int = 42

    def __post_init__(self):
        require(self, "n_splits", lambda v: v >= 2, "at least 2")
        require(self, "seed", lambda v: 0 <= v <= MAX_SEED, SEED_RANGE)


@dataclass
class PreprocessConfig:
    lemmatizer: Literal["auto", "wordnet", "lemminflect", "none"] = "auto"
    segmenter: Literal["auto", "jieba", "none"] = "auto"   # word segmentation of text without spaces


@dataclass
class ResourcesConfig:
    """What one (model, fold) job asks of a Ray cluster; None: the kind's default (1 CPU; a
    transformer also 1 GPU where the cluster has GPUs). The job's torch and LightGBM threads
    equal num_cpus. Not part of a model's fingerprint: where a job runs changes nothing it makes."""
    num_cpus: Optional[float] = None
    num_gpus: Optional[float] = None
    memory_gb: Optional[float] = None

    def __post_init__(self):
        for key in ("num_cpus", "num_gpus", "memory_gb"):
            require(self, key, lambda v: v is None or v >= 0, "0 or more (or null: the kind's default)")


@dataclass
class AugmentConfig:
    """Offline augmentation of a fold's training rows (pipeline/augment.py); rates are the share
    of a text's words each op touches. Off by default (copies 0 and swap false)."""
    copies: int = 0                 # augmented copies of every training row (EDA and mlm ops)
    random_swap: float = 0.0        # EDA: swap this share of word pairs
    random_delete: float = 0.0      # EDA: drop each word with this probability
    random_insert: float = 0.0      # EDA: insert this share of words (copies of the row's own words)
    synonym: float = 0.0            # EDA: replace this share of words by a WordNet synonym
    # how `synonym` replaces words: WordNet, a masked LM (mlm_backbone), or not at all;
    # auto: wordnet where nltk's corpus is installed, else mlm where a masked LM is known, else none
    synonyms: Literal["auto", "wordnet", "mlm", "none"] = "auto"
    mlm: float = 0.0                # contextual substitution of this share of words by a masked LM
    mlm_backbone: Optional[str] = None  # the masked LM (a name, folder or pretrained:<name>); required when mlm > 0
    swap: bool = False              # pairs: one more copy of every training row as (b, a)

    def __post_init__(self):
        # each copy adds every training row once more, in memory, per fold: 20 is already a lot
        require(self, "copies", lambda v: 0 <= v <= 20, "between 0 and 20")
        for key in ("random_swap", "random_delete", "random_insert", "synonym", "mlm"):
            require(self, key, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")
        if self.copies and not any((self.random_swap, self.random_delete, self.random_insert, self.synonym, self.mlm)):
            raise InvalidValue("copies", "needs an op (random_swap, random_delete, random_insert, synonym or mlm) "
                               "with a rate above 0", self.copies)
        if self.mlm and not self.mlm_backbone:
            raise InvalidValue("mlm_backbone", "is required when mlm > 0", self.mlm_backbone)

    @property
    def active(self) -> bool:
        return self.copies > 0 or self.swap


@dataclass
class ModelConfig:
    name: str
    kind: str
    view: Literal["raw", "lower", "lemma"] = "lower"
    seed: Optional[int] = None      # None: the experiment seed
    seeds: Optional[list[int]] = None  # a seed bag: every fold trains once per seed, predictions averaged
    params: dict = field(default_factory=dict)  # validated against the kind's params class
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        require(self, "seed", lambda v: v is None or 0 <= v <= MAX_SEED, SEED_RANGE)
        require(self, "seeds", lambda v: v is None or (len(v) >= 1 and all(0 <= s <= MAX_SEED for s in v)),
                f"null or a non-empty list of seeds {SEED_RANGE}")
        require(self, "seeds", lambda v: v is None or len(set(v)) == len(v), "a list without repeats")
        if self.seed is not None and self.seeds is not None:
            raise InvalidValue("seeds", "cannot be set together with seed (seed: one run per fold; "
                               "seeds: a bag of runs per fold); keep one", self.seeds)
        if self.seeds is not None and len(self.seeds) == 1:  # a bag of one is the plain model, byte for byte
            self.seed, self.seeds = self.seeds[0], None

    @property
    def seed_bag(self) -> list[int]:
        """The seeds each fold trains with: [seed] for a plain model."""
        return list(self.seeds) if self.seeds is not None else [self.seed]


@dataclass
class EnsembleConfig:
    methods: list[str] = field(default_factory=lambda: ["stack", "blend", "vote"])
    models: Optional[Selection] = None   # None: every model of the experiment
    round: int = 0                       # which pseudo-label round's matrices to combine
    tune_threshold: bool = True          # binary tasks: threshold tuned on OOF for `metric`
    stack_c: float = 1.0
    submit: str = "auto"                 # the method copied to submissions/<exp>.csv; auto: best honest OOF
    # what the submission's columns hold: the decisions (class name, tuned rating, 0/1 labels) or
    # the matrix itself (class or label probabilities, the raw value), for log-loss / AUC competitions
    submit_values: Literal["decisions", "probabilities"] = "decisions"
    # method select (hill-climbing ensemble selection): start from the select_init best models,
    # add at most select_steps picks; select_bags > 1: climbs on random select_fraction of the models
    select_init: int = 1
    select_steps: int = 50
    select_bags: int = 1
    select_fraction: float = 0.5

    def __post_init__(self):
        require(self, "round", lambda v: v >= 0, "0 or more")
        require(self, "stack_c", lambda v: v > 0, "positive")
        require(self, "select_init", lambda v: v >= 1, "1 or more")
        require(self, "select_steps", lambda v: 0 <= v <= 10000, "in 0..10000")
        require(self, "select_bags", lambda v: 1 <= v <= 1000, "in 1..1000")
        require(self, "select_fraction", lambda v: 0 < v <= 1, "in (0, 1]")
        require(self, "methods", lambda v: len(v) >= 1, "a non-empty list")
        require(self, "models", lambda v: v is None or len(v) >= 1, "null (every model) or a non-empty list")


@dataclass
class PseudoConfig:
    enabled: bool = False
    rounds: int = 1
    min_votes: Optional[int] = None      # None: every model must agree
    min_confidence: float = 0.9
    max_fraction: float = 0.5            # of the train size, per fold
    keep_class_balance: bool = True
    tolerance: float = 0.1               # regression: a teacher agrees within this many target stds
    models: Optional[Selection] = None   # teachers; None: all
    retrain: Optional[Selection] = None  # students; None: all
    # classification: a pseudo row enters training once per class, weighted by the teachers' mean
    # probability of it (its soft label) instead of once with the voted class; the task refuses it otherwise
    soft: bool = False

    def __post_init__(self):
        require(self, "rounds", lambda v: v >= 1, "at least 1")
        for key in ("models", "retrain"):
            require(self, key, lambda v: v is None or len(v) >= 1, "null (every model) or a non-empty list")
        require(self, "min_votes", lambda v: v is None or v >= 1, "at least 1 (or null: every teacher)")
        require(self, "min_confidence", lambda v: 0.0 <= v <= 1.0, "between 0 and 1")
        require(self, "max_fraction", lambda v: v > 0, "positive")
        require(self, "tolerance", lambda v: v >= 0, "0 or more")


@dataclass
class ExecutionConfig:
    backend: str = "local"          # one of backends.BACKENDS
    address: Optional[str] = None   # None: RAY_ADDRESS, else a local Ray instance; "auto" or "ray://host:port"
    max_retries: int = 2            # per job whose worker process or node died (a job that raises is not retried)

    def __post_init__(self):
        require(self, "max_retries", lambda v: v >= 0, "0 or more")
        if self.backend not in backends.BACKENDS:
            raise PipelineError(f"config: execution.backend must be one of "
                                f"{', '.join(repr(b) for b in backends.BACKENDS)}, got {excerpt(self.backend)}")


@dataclass
class PretrainConfig:
    """In-task pre-training (the pretrain stage): masked-language-model training of a backbone on
    the experiment's train and test texts (never their labels); models use it as `pretrained:<name>`."""
    name: str = "mlm"                 # <paths.work>/<exp>/pretrained/<name>/
    backbone: Optional[str] = None    # None: the first transformer model's backbone, else the default
    view: Literal["raw", "lower", "lemma"] = "lower"
    epochs: int = 3
    max_steps: Optional[int] = None   # stop after this many optimiser steps in all
    max_minutes: Optional[float] = None  # stop after this much training time (the result then depends on speed)
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    mlm_probability: float = 0.15
    whole_word: bool = True           # every piece of a chosen word masked together
    warmup: float = 0.06              # fraction of all optimiser steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0        # 0: no clipping
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # auto: bf16 where the hardware has it, else fp32
    seed: Optional[int] = None        # None: the experiment seed
    save_every: int = 0               # optimiser steps between resume checkpoints; 0: once per epoch
    num_threads: Optional[int] = None

    def __post_init__(self):
        for key in ("epochs", "batch_size"):
            require(self, key, lambda v: v >= 1, "at least 1")
        require(self, "max_length", lambda v: v >= 8, "at least 8")
        require(self, "max_steps", lambda v: v is None or v >= 1, "at least 1 (or null: every epoch)")
        require(self, "max_minutes", lambda v: v is None or v > 0, "positive (or null: no time budget)")
        require(self, "lr", lambda v: v > 0, "positive")
        require(self, "mlm_probability", lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
        require(self, "warmup", lambda v: 0 <= v < 1, "in [0, 1)")
        for key in ("weight_decay", "max_grad_norm", "save_every"):
            require(self, key, lambda v: v >= 0, "0 or more")
        require(self, "seed", lambda v: v is None or 0 <= v <= MAX_SEED, SEED_RANGE)
        require(self, "num_threads", lambda v: v is None or v >= 1, "at least 1 (or null)")

    def identity(self) -> dict:
        """The settings that shape the pretrained weights (not where or how often it saves)."""
        return {k: v for k, v in to_dict(self).items() if k not in ("save_every", "num_threads")}


@dataclass
class ServeConfig:
    """`python -m pipeline.serve`: where it listens and how it micro-batches concurrent requests."""
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64             # rows run through the models together, at most
    # how long the first waiting request waits for others to join its batch: on the demo ensemble
    # (bench.serve_load, 16 clients) 5 ms made batches of 8.7 rows on average and 55% of the offline
    # rate, 50 ms batches of 16 (every client) and 83%, with a lower p50 latency under that load
    max_wait_ms: float = 50.0
    max_body_bytes: int = 1_000_000  # a larger request body is refused with 413

    def __post_init__(self):
        require(self, "port", lambda v: 0 <= v <= 65535, "between 0 and 65535 (0: any free port)")
        require(self, "max_batch", lambda v: v >= 1, "at least 1")
        require(self, "max_wait_ms", lambda v: 0 <= v <= 10_000, "between 0 and 10000")
        require(self, "max_body_bytes", lambda v: v >= 64, "at least 64")
        require(self, "host", lambda v: len(v) > 0, "a host name or address")


@dataclass
class PathsConfig:
    work: str = "data"
    models: str = "models"
    submissions: str = "submissions"
    reports: str = "reports"


@dataclass
class ExperimentConfig:
    experiment: str = "demo"
    seed: int = 42
    task: Literal["classification", "regression", "multilabel"] = "classification"
    # None: the task's default (accuracy, rmse, roc_auc); the task lists the metrics it accepts
    metric: Optional[Literal["accuracy", "f1", "macro_f1", "logloss", "mcc", "roc_auc",
                             "pearson", "spearman", "rmse", "mae", "qwk"]] = None
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    models: list[ModelConfig] = field(default_factory=list)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    pretrain: Optional[PretrainConfig] = None   # None: no in-task pre-training
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self):
        require(self, "seed", lambda v: 0 <= v <= MAX_SEED, SEED_RANGE)
        if self.metric is None:  # the task's default metric
            self.metric = get_task(self.task).default_metric

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise PipelineError(f"config: no model named {name!r} (models: {[m.name for m in self.models]})")


# numpy and scikit-learn take seeds in [0, 2**32); fold k of a model uses its seed + k.
MAX_SEED = 2**31 - 1
SEED_RANGE = f"between 0 and {MAX_SEED}"


def require(obj: Any, key: str, ok: Callable[[Any], bool], expected: str) -> None:
    """Range check for a __post_init__: raise InvalidValue naming `key` when ok(value) is false."""
    value = getattr(obj, key)
    if not ok(value):
        raise InvalidValue(key, f"must be {expected}", value)


ENV_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(text: str, key: str) -> str:
    """Expand ${VAR} and ${VAR:-default}; an unset variable without a default is an error."""
    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1)) or m.group(2)
        if value is None:
            raise PipelineError(f"config: {key} uses ${{{m.group(1)}}}, which is not set")
        return value

    return ENV_VAR.sub(sub, text)


# ----------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (dataclasses built)."""
    origin = typing.get_origin(tp)
    bad = PipelineError(f"config: {key} must be {_type_name(tp)}, got {excerpt(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except PipelineError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return build(tp, value, key)
    if tp is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str) and FLOAT_LITERAL.match(value.strip()):
            return float(value)  # YAML 1.1 reads 2e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise PipelineError(f"config: {key} must be a finite number, got {excerpt(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise bad
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp} at {key}")


def build(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise PipelineError(f"config: unknown key {where} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in values:
            kwargs[f.name] = coerce(values[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PipelineError(f"config: {key} is required")
    try:
        return cls(**kwargs)
    except InvalidValue as e:  # out of range, found by the class itself
        raise PipelineError(f"config: {e.where(prefix)}") from None


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def model_identity(m: ModelConfig) -> dict:
    """What a model is, for its fingerprint and manifest: its config less where it runs, and its
    kind's save format. `seeds`, `augment` and a save format of 1 enter only when set, so the
    fingerprints of models without them are unchanged."""
    out = {k: v for k, v in to_dict(m).items() if k != "resources"}
    if out["seeds"] is None:
        del out["seeds"]
    if not m.augment.active:
        del out["augment"]
    kind = registry.KINDS.get(m.kind)
    if kind is not None and kind.save_format > 1:  # folds saved in an older format are another model
        out["save_format"] = kind.save_format
    return out


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON form of a config (or any JSON-able value)."""
    text = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- overrides


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise PipelineError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), load_yaml_value(raw, f"override {key.strip()}")


def _set_path(tree: dict, path: list[str], value: Any, full: str) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(path[: i + 1]))
            continue
        if not isinstance(node, dict):
            raise PipelineError(f"override {full}: {'.'.join(path[:i])} is not a mapping")
        node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        raise PipelineError(f"override {full}: name a key inside the list item")
    node[last] = value


def _list_item(items: list, part: str, where: str) -> Any:
    """List items are addressed by index or by their `name` (models.tfidf_lr.params.C=2)."""
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    for item in items:
        if isinstance(item, dict) and item.get("name") == part:
            return item
    raise PipelineError(f"config: no item {where} (names: {[i.get('name') for i in items if isinstance(i, dict)]})")


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Defaults, then the YAML file (if any), then overrides; validated, model params included."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        tree = load_yaml(read_config_text(p), f"config file {p}") or {}
        if not isinstance(tree, dict):
            raise PipelineError(f"config file {p} must hold a mapping at the top level")
    for text in overrides:
        keys, value = _parse_override(text)
        _set_path(tree, keys, value, text)
    cfg = build(ExperimentConfig, tree)
    _validate(cfg)
    cfg.source = str(path) if path is not None else None  # not fields: never hashed or saved
    cfg.overrides = list(overrides)
    return cfg


def config_source(cfg: ExperimentConfig) -> str:
    """The config file a config was loaded from and the overrides it was loaded with, as the
    commands that error messages suggest must repeat them (shell-quoted)."""
    parts = [getattr(cfg, "source", None) or "<config.yaml>"] + list(getattr(cfg, "overrides", []))
    return " ".join(shlex.quote(p) if p != "<config.yaml>" else p for p in parts)


def _validate(cfg: ExperimentConfig) -> None:
    check_experiment_name("experiment", cfg.experiment)
    get_task(cfg.task).check_config(cfg)
    for i, m in enumerate(cfg.models):
        check_model_name(f"models[{i}].name", m.name)
    names = [m.name for m in cfg.models]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PipelineError(f"config: model names must be unique, repeated: {sorted(dup)}")
    for i, m in enumerate(cfg.models):
        params_cls = registry.params_class(m.kind, f"models.{m.name}.kind")
        m.params = to_dict(build(params_cls, m.params, f"models.{m.name}.params"))
        if m.seed is None and m.seeds is None:
            m.seed = cfg.seed
        _resolve_synonyms(cfg, m)
    _validate_pretrain(cfg)
    if cfg.folds.strategy == "group" and not cfg.folds.group_column:
        raise PipelineError("config: folds.strategy=group needs folds.group_column")
    cfg.ensemble.models = select_models(cfg, "ensemble.models", cfg.ensemble.models)
    cfg.pseudo.models = select_models(cfg, "pseudo.models", cfg.pseudo.models)
    cfg.pseudo.retrain = select_models(cfg, "pseudo.retrain", cfg.pseudo.retrain)
    for mth in cfg.ensemble.methods:
        if mth not in METHODS:
            raise PipelineError(f"config: ensemble.methods has unknown method {excerpt(mth)} "
                                f"(known: {', '.join(METHODS)})")
    r, p = cfg.ensemble.round, cfg.pseudo
    if r > 0 and (not p.enabled or r > p.rounds):
        made = "no rounds (pseudo.enabled=false)" if not p.enabled else f"rounds 1..{p.rounds} (pseudo.rounds)"
        raise PipelineError(f"config: ensemble.round={r} but pseudo-labelling makes {made}")
    if cfg.ensemble.submit != "auto" and cfg.ensemble.submit not in cfg.ensemble.methods:
        raise PipelineError(f"config: ensemble.submit={cfg.ensemble.submit!r} is not in ensemble.methods")


def select_models(cfg: ExperimentConfig, key: str, selection: Optional[Selection]) -> Optional[list[str]]:
    """A model selection as the names it picks (None: every model, left as None).

    A group (`cpu`, `gpu`) picks the models whose kind runs there, in config order, and every model
    where none does, so editing `models` never breaks the section; resolved here so the saved
    config and every fingerprint name the models. A list must name models of this config: an
    unknown name is one line saying what to write instead."""
    names = [m.name for m in cfg.models]
    if selection is None:
        return None
    if isinstance(selection, str):
        picked = [m.name for m in cfg.models if registry.kind(m.kind).accelerator == selection]
        return picked or names
    for n in selection:
        if n not in names:
            raise PipelineError(f"config: {key} names unknown model {n!r} (models: {', '.join(names) or 'none'}); "
                                f"list models of this config, or write {key}: cpu (the models that run on CPU) "
                                "or null (every model)")
    return list(selection)


def _resolve_synonyms(cfg: ExperimentConfig, m: ModelConfig) -> None:
    """augment.synonyms auto -> wordnet where nltk's corpus is installed, else mlm (contextual
    substitution by augment.mlm_backbone, by default this config's pretrained backbone) where there
    is a masked LM, else none; resolved here so the saved config and the fingerprint say which ran.
    An explicit wordnet without the corpus, or mlm without a masked LM, is one line."""
    a = m.augment
    if not a.synonym or a.synonyms == "none":
        return
    if a.synonyms == "wordnet" or (a.synonyms == "auto" and views.wordnet_available()):
        if not views.wordnet_available():
            raise PipelineError(f"config: models.{m.name}.augment.synonyms=wordnet but nltk's WordNet corpus is "
                                "not installed (python -m nltk.downloader wordnet, or synonyms: auto)")
        a.synonyms = "wordnet"
        return
    if a.mlm_backbone is None and cfg.pretrain is not None:
        a.mlm_backbone = PRETRAINED + cfg.pretrain.name
    if a.mlm_backbone is None and a.synonyms == "mlm":
        raise PipelineError(f"config: models.{m.name}.augment.synonyms=mlm needs a masked LM: "
                            "augment.mlm_backbone, or a pretrain section (pretrained:<name>)")
    a.synonyms = "mlm" if a.mlm_backbone else "none"


def pretrained_refs(m: ModelConfig) -> list[tuple[str, str]]:
    """[(key, <name>)] of the pretrained backbones a model names: params keys, and
    `augment.mlm_backbone` for the masked LM its augmentation substitutes words with."""
    refs = [(k, pretrained_name(m.params.get(k))) for k in BACKBONE_KEYS if pretrained_name(m.params.get(k))]
    if pretrained_name(m.augment.mlm_backbone):
        refs.append(("augment.mlm_backbone", pretrained_name(m.augment.mlm_backbone)))
    return refs


def _validate_pretrain(cfg: ExperimentConfig) -> None:
    """pretrained:<name> must name this config's pretrain; pretrain.backbone defaults to the first
    transformer model's own (not pretrained) backbone, else the transformer default."""
    p = cfg.pretrain
    for m in cfg.models:
        for key, name in pretrained_refs(m):
            if p is None or name != p.name:
                have = "no pretrain section" if p is None else f"pretrain.name is {p.name!r}"
                where = key if key.startswith("augment.") else f"params.{key}"
                raise PipelineError(f"config: models.{m.name}.{where}=pretrained:{name} but the config has {have}")
    if p is None:
        return
    check_name("pretrain.name", p.name)
    if p.backbone is None:
        own = [m.params["backbone"] for m in cfg.models if m.kind == "transformer" and not pretrained_refs(m)]
        p.backbone = own[0] if own else TransformerParams().backbone
    if pretrained_name(p.backbone) is not None:
        raise PipelineError(f"config: pretrain.backbone={p.backbone!r} cannot be a pretrained backbone itself")
    if p.seed is None:
        p.seed = cfg.seed


def model_params(m: ModelConfig) -> Any:
    """The typed params object of a model config."""
    return build(registry.params_class(m.kind, m.name), m.params, f"models.{m.name}.params")


def config_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as saved beside every output it produced (config.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
