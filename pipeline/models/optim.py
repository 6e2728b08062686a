"""The optimiser side of one transformer fit.

AdamW over the layer-wise LR groups (heads.param_groups), warmup then linear decay, gradient
clipping, an fp16 grad scaler on CUDA, and, when `sparse_embeddings` is on, a lazy Adam update of
the word-embedding table: that table gets row-sparse gradients and only the rows of the tokens in
the step move (torch.optim.SparseAdam, no weight decay). For MiniLM the table is half of all
parameters (30522 x 384 of 22.7M), and its dense gradient plus its AdamW update cost about a third
of a CPU training step (measured by bench.profile_transformer); the lazy update skips both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from .heads import Classifier, param_groups
from .params import TransformerParams


@dataclass
class Optim:
    """AdamW (+ SparseAdam for the word embeddings), their schedules, an fp16 scaler (or None)."""
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler]
    scaler: Optional[torch.amp.GradScaler]
    params: list[nn.Parameter]  # every trainable parameter, for clipping

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def last_lrs(self) -> list[float]:
        return [lr for s in self.schedulers for lr in s.get_last_lr()]

    def unscale(self) -> None:
        if self.scaler is not None:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)

    def step(self) -> None:
        """One optimiser step of every optimiser, the schedules advanced, gradients cleared.
        With an fp16 scaler a step whose gradients are not finite is skipped by the scaler."""
        for opt in self.optimizers:
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        for s in self.schedulers:
            s.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)


def sparse_embedding(module: Classifier) -> Optional[nn.Parameter]:
    """The trainable word-embedding table, switched to row-sparse gradients; None when the backbone's
    input embeddings are not a plain nn.Embedding or are frozen."""
    emb = module.backbone.get_input_embeddings()
    if type(emb) is not nn.Embedding or not emb.weight.requires_grad:
        return None
    emb.sparse = True
    return emb.weight


def build_optim(module: Classifier, params: TransformerParams, total_steps: int, precision: str,
                device: torch.device, sparse: Optional[bool] = None) -> Optim:
    """AdamW over the LLRD groups + warmup (a fraction of all optimiser steps) then linear decay to 0;
    the word embeddings in their own lazy SparseAdam when `sparse` (None: params.sparse_embeddings;
    the trainer passes its runtime's choice, dense on CUDA)."""
    sparse = sparse_embedding(module) if (params.sparse_embeddings if sparse is None else sparse) else None
    groups = param_groups(module, params.lr, params.head_lr, params.llrd, params.weight_decay)
    optimizers: list[torch.optim.Optimizer] = []
    if sparse is not None:
        dense = [dict(g, params=[q for q in g["params"] if q is not sparse]) for g in groups]
        embed_lr = next(g["lr"] for g in groups if any(q is sparse for q in g["params"]))
        groups = [g for g in dense if g["params"]]
        optimizers.append(torch.optim.SparseAdam([{"name": "word_embeddings", "params": [sparse], "lr": embed_lr}]))
    # fused: one pass over each tensor instead of one per arithmetic op, 3x faster on CPU here; on
    # CUDA one kernel per group, and the fp16 scaler's inf check stays on the device
    optimizers.insert(0, torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay, fused=True))
    warmup = round(params.warmup * total_steps)
    schedulers = [get_linear_schedule_with_warmup(opt, warmup, total_steps) for opt in optimizers]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    trainable = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    return Optim(optimizers, schedulers, scaler, trainable)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2 over all gradients) that also takes row-sparse gradients,
    which it refuses. Sparse gradients are coalesced first (repeated rows summed). Returns the norm
    before clipping."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, coef)
    return total
