"""SDPA attention for backbones whose transformers code has eager attention only.

transformers 5.x runs MPNet's self-attention as explicit matrix products (scores, relative position
bias, additive mask, softmax, dropout, product): it refuses attn_implementation="sdpa" for it. The
same computation is one call of torch's scaled_dot_product_attention with the position bias and the
mask added into its float attn_mask, which on CUDA runs the fused memory-efficient kernel (bias
gradients included) instead of four kernels and a (B, heads, T, T) probability tensor kept for the
backward. Here such a backbone's self-attention modules are re-classed to a subclass that does so
(same parameters, same state dict: checkpoints are unchanged either way).

Which backbones run it is runtime.resolve's choice (`attention: sdpa`, or `auto` on CUDA); the
fold record's runtime.attention says "sdpa" where it ran.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention


class MPNetSdpaSelfAttention(MPNetSelfAttention):
    """MPNetSelfAttention through scaled_dot_product_attention; attention probabilities asked for
    (output_attentions) fall back to the eager forward, which returns them."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_bias: Optional[torch.Tensor] = None, output_attentions: bool = False, **kwargs):
        """hidden_states (B, T, H); attention_mask additive (B, 1, 1|T, T) or bool (True: attend) or
        None; position_bias (B|1, heads, T, T) -> ((B, T, H),)."""
        if output_attentions:
            return super().forward(hidden_states, attention_mask, position_bias, output_attentions, **kwargs)
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
        bias = attention_bias(position_bias, attention_mask, q.dtype)
        p = self.dropout.p if self.training else 0.0
        c = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return (self.o(c.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)),)


ADAPTED = {"mpnet": (MPNetSelfAttention, MPNetSdpaSelfAttention)}   # model_type -> (eager class, SDPA class)


def attention_bias(position_bias: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                   dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The float attn_mask SDPA adds to the scaled scores: position bias + the padding mask (a
    bool mask becomes 0 / the dtype's lowest value), in the queries' dtype (SDPA's requirement)."""
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    if position_bias is None:
        return None if mask is None else mask.to(dtype)
    return (position_bias if mask is None else position_bias + mask).to(dtype)


def plan(config, attention: Optional[str], adapter: bool) -> tuple[Optional[str], bool]:
    """(the attn_implementation to ask transformers for, None: its default; whether to use_sdpa on
    the loaded backbone) for a config, the attention asked (Runtime.attention) and Runtime.sdpa_adapter."""
    adapt = adapter and getattr(config, "model_type", None) in ADAPTED
    return (None if adapt else attention), adapt


def use_sdpa(backbone: nn.Module) -> int:
    """Re-class the backbone's eager self-attention modules to their SDPA twins, in place; returns
    how many. A backbone of another type is left alone (0)."""
    classes = ADAPTED.get(_model_type(backbone))
    if classes is None:
        return 0
    eager, fused = classes
    count = 0
    for module in backbone.modules():
        if type(module) is eager:
            module.__class__ = fused
            count += 1
    return count


def attention_used(backbone: nn.Module) -> str:
    """The attention the backbone runs: "sdpa" where use_sdpa re-classed it, else its config's."""
    classes = ADAPTED.get(_model_type(backbone))
    if classes is not None and any(type(m) is classes[1] for m in backbone.modules()):
        return "sdpa"
    return getattr(backbone.config, "_attn_implementation", None) or "eager"


def _model_type(module: nn.Module) -> Optional[str]:
    return getattr(getattr(module, "config", None), "model_type", None)
