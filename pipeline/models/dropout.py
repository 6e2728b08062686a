"""Dropout with cheap masks, for CPU training.

torch's CPU dropout draws one Bernoulli sample per element (aten::bernoulli_), which took 18% of a
MiniLM training step on this project's 2-core machine (bench.profile_transformer). Here one 64-bit
draw from the same seeded generator gives four 16-bit lanes, each compared with a threshold:
the keep probability is 1 - p rounded to 1/65536, and the mask costs about a quarter as much. Same
seed, same masks. CUDA's fused dropout is already cheap, so only CPU training swaps it in.

Two places use it: FastDropout replaces the nn.Dropout modules (swap_dropout), and `attention`
replaces transformers' SDPA attention while training (fast_attention_dropout), because the
attention-probability dropout is an argument to SDPA, not a module.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
from torch import nn

_LANES = 4  # 16-bit lanes per 64-bit draw
_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """(shape) bool, each element True with probability 1 - p (to 1/65536)."""
    n = math.prod(shape)
    # the full int64 range: random_() with no bounds leaves the top bit 0, which would bias a lane
    draws = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64, device=device).random_(_INT64_MIN, _INT64_MAX)
    return draws.view(torch.int16)[:n].view(shape) >= -32768 + round(p * 65536)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout: zero with probability p, scale the rest by 1 / (1 - p).

    x times a 0 / (1 / (1 - p)) mask in x's dtype: autograd keeps the mask for the backward product,
    and a multiply is cheaper than torch.where here, forward and backward."""
    mask = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


class FastDropout(nn.Module):
    """Drop-in for nn.Dropout (same p, same train/eval behaviour)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p) if self.training and self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def swap_dropout(module: nn.Module) -> int:
    """Replace every nn.Dropout inside `module` by FastDropout with the same p; returns how many.

    Only dropout modules are reached: attention-probability dropout that a model passes to SDPA as
    an argument stays torch's own."""
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, FastDropout(child.p))
            count += 1
        else:
            count += swap_dropout(child)
    return count


# ----------------------------------------------------------------------------- attention dropout

ATTENTION = "pipeline_sdpa"  # registered with transformers' attention and mask interfaces


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
              **kwargs):
    """transformers' SDPA attention, except in training with attention dropout, where SDPA falls back
    to its unfused path and draws its mask with bernoulli_: there the same product runs here with a
    fast_dropout mask. query/key/value (B, heads, T, d), mask bool (B, 1, T, T) (True: attend) or
    additive, or None -> ((B, T, heads, d), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (not module.training or dropout <= 0 or getattr(module, "is_causal", False)
             or getattr(module, "num_key_value_groups", 1) > 1 or kwargs.get("position_bias") is not None)
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                  if attention_mask.dtype == torch.bool else scores + attention_mask)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(fast_dropout(probs, dropout), value)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


@contextlib.contextmanager
def fast_attention_dropout(backbone: nn.Module):
    """Inside the block a backbone that runs SDPA attention uses `attention` (fast attention-dropout
    masks); others are left alone. SDPA is restored on exit, so a saved config never names it."""
    if getattr(backbone.config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register()
    backbone.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        backbone.set_attn_implementation("sdpa")
