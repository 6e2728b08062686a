"""SDPA attention for backbones whose transformers code has eager attention only.

transformers 5.x runs MPNet's and DeBERTa-v2/v3's self-attention as explicit matrix products
(scores, position terms, mask, softmax, dropout, product) and refuses attn_implementation="sdpa"
for them. The same computation is one call of torch's scaled_dot_product_attention with the
position terms (MPNet's relative position bias; DeBERTa's content-to-position and
position-to-content scores, computed as transformers computes them) and the padding mask in its
float attn_mask: on CUDA the fused memory-efficient kernel (bias gradients included) instead of
four kernels and a (B, heads, T, T) probability tensor kept for the backward. Here such a
backbone's self-attention modules are re-classed to a subclass that does so (same parameters,
same state dict: checkpoints are unchanged either way).

Which backbones run it is runtime.resolve's choice (`attention: sdpa`, or `auto` on CUDA); the
fold record's runtime.attention says "sdpa" where it ran.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

from .heads import additive_mask


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


class DebertaV2SdpaSelfAttention(DisentangledSelfAttention):
    """DeBERTa-v2/v3's disentangled attention through scaled_dot_product_attention: the
    content-to-position and position-to-content terms (computed as transformers computes them,
    already divided by the scale) go into the float attn_mask with the padding mask. Attention
    probabilities asked for, or query states apart from the hidden states (the enhanced mask
    decoder of pre-training), fall back to the eager forward."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False,
                query_states: Optional[torch.Tensor] = None, relative_pos: Optional[torch.Tensor] = None,
                rel_embeddings: Optional[torch.Tensor] = None):
        """hidden_states (B, T, H); attention_mask (B, 1, T, T) 0/1 (1: attend) -> ((B, T, H), None)."""
        if output_attentions or query_states is not None:
            return super().forward(hidden_states, attention_mask, output_attentions, query_states, relative_pos,
                                   rel_embeddings)
        heads = self.num_attention_heads
        q, k, v = (self.transpose_for_scores(proj(hidden_states), heads)   # (B * heads, T, d)
                   for proj in (self.query_proj, self.key_proj, self.value_proj))
        factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        bias = None
        if self.relative_attention:
            bias = self.disentangled_attention_bias(q, k, relative_pos, self.pos_dropout(rel_embeddings), factor)
        b, t, d = hidden_states.shape[0], q.shape[1], q.shape[2]
        keep = attention_mask.bool()
        bias = torch.zeros((b, 1, t, t), dtype=q.dtype, device=q.device) if bias is None else bias.view(b, heads, t, t)
        bias = bias.masked_fill(~keep, torch.finfo(q.dtype).min).to(q.dtype)
        p = self.dropout.p if self.training else 0.0
        c = F.scaled_dot_product_attention(q.view(b, heads, t, d), k.view(b, heads, t, d), v.view(b, heads, t, d),
                                           attn_mask=bias, dropout_p=p, scale=1 / math.sqrt(d * factor))
        return c.transpose(1, 2).reshape(b, t, heads * d), None


# model_type -> (eager class, SDPA class)
ADAPTED = {"mpnet": (MPNetSelfAttention, MPNetSdpaSelfAttention),
           "deberta-v2": (DisentangledSelfAttention, DebertaV2SdpaSelfAttention)}


def attention_bias(position_bias: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                   dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The float attn_mask SDPA adds to the scaled scores: position bias + the padding mask (a
    bool mask becomes 0 / the dtype's lowest value), in the queries' dtype (SDPA's requirement)."""
    if mask is not None and mask.dtype == torch.bool:
        mask = additive_mask(mask, dtype)
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
