"""Classification heads on top of a Hugging Face encoder, and the optimiser's parameter groups.

Shapes: B = batch, T = tokens, H = the backbone's hidden size (read from its config), C = classes.
Pooling always runs in float32, so a bf16/fp16 autocast backbone does not lose precision in sums.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from torch import nn

from .dropout import ATTENTION

HEADS = ("cls", "mean", "max4", "bilstm")
MAX4_LAYERS = 4

# "encoder.layer.3." (BERT, RoBERTa, ELECTRA, DeBERTa) and ALBERT's shared groups
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
_ALBERT_GROUP = re.compile(r"albert_layer_groups\.(\d+)\.")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H), mask (B, T) of 0/1 -> (B, H) mean over the real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class Head(nn.Module):
    """Pooling -> dropout -> linear.

    cls:    the first token of the last layer.
    mean:   mean of the last layer over the attention mask.
    max4:   element-wise max over the last 4 encoder layers (fewer if the model has fewer), per
            token, then mean over the attention mask: keeps size H and lets each feature pick the
            layer where it is strongest.
    bilstm: a BiLSTM (H/2 per direction, over packed sequences so padding never enters the
            backward pass) over the last layer, then mean over the attention mask.
    multi_sample_dropout N > 1: in training, logits are the mean over N dropout masks.
    """

    def __init__(self, kind: str, hidden: int, n_classes: int, dropout: float, multi_sample: int = 1):
        super().__init__()
        self.kind = kind
        self.multi_sample = max(1, int(multi_sample))
        self.lstm = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True) if kind == "bilstm" else None
        pooled = 2 * (hidden // 2) if kind == "bilstm" else hidden
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(pooled, n_classes)

    @property
    def needs_hidden_states(self) -> bool:
        return self.kind == "max4"

    def pool(self, last: torch.Tensor, mask: torch.Tensor, layers: Optional[tuple] = None) -> torch.Tensor:
        """last (B, T, H), mask (B, T), layers: every layer's (B, T, H) (max4 only) -> (B, H') float32."""
        if self.kind == "cls":
            return last[:, 0].float()
        if self.kind == "mean":
            return masked_mean(last.float(), mask)
        if self.kind == "max4":
            top = layers[1:][-MAX4_LAYERS:] if len(layers) > 1 else layers  # layers[0] = embeddings
            return masked_mean(torch.stack([h.float() for h in top]).amax(0), mask)
        return masked_mean(self._lstm(last.float(), mask), mask)

    def _lstm(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, H) float32 -> (B, T, 2*(H//2)); run in float32 outside autocast for stability."""
        lengths = mask.sum(1).clamp(min=1).cpu()
        with torch.autocast(x.device.type, enabled=False):
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (B, H') -> logits (B, C) float32."""
        n = self.multi_sample if self.training else 1
        if n == 1:
            return self.out(self.dropout(pooled)).float()
        return torch.stack([self.out(self.dropout(pooled)).float() for _ in range(n)]).mean(0)


# Backbones whose forward turns a 2D padding mask into its attention mask with transformers'
# create_bidirectional_mask, once, and returns a 4D mask given to it as it is (checked on
# transformers 5.23's modeling files). Others (DeBERTa's own masks, ModernBERT's sliding windows)
# always get the 2D mask.
MASK_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert", "albert"})
BOOL_MASK_ATTENTION = ("sdpa", ATTENTION)   # SDPA and its fast-dropout twin take a bool mask (True: attend)


def attention_mask_4d(mask: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """mask (B, T) of 0/1 -> the (B, 1, 1, T) mask create_bidirectional_mask would build for the
    backbone's attention (bool for SDPA; additive 0 / float min in the embeddings' dtype for
    eager), or the 2D mask unchanged where its attention or model type is not one of those.

    Built here, the mask never needs transformers' check of whether it is all ones (a read back to
    the host on every forward of a padded batch, which stalls the queue of CUDA work)."""
    config = backbone.config
    impl = getattr(config, "_attn_implementation", None)
    if config.model_type not in MASK_TYPES or impl not in BOOL_MASK_ATTENTION + ("eager",):
        return mask
    keep = mask.bool()[:, None, None, :]
    if impl != "eager":
        return keep
    return additive_mask(keep, backbone.get_input_embeddings().weight.dtype)


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True: attend) -> the same shape in `dtype`: 0 where kept, the dtype's lowest value
    where not (what eager attention adds to its scores)."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)


class Classifier(nn.Module):
    """backbone (an AutoModel) + Head. forward(input_ids, attention_mask[, token_type_ids]) -> (B, C).

    device_masks: the backbone gets its 4D attention mask built here (attention_mask_4d), set for
    batches gathered on a CUDA device; off, it gets the 2D mask as before."""

    def __init__(self, backbone: nn.Module, head: Head, use_token_types: bool):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.use_token_types = use_token_types
        self.device_masks = False

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """attention_mask None: no padding in the batch (the backbone gets None, the head all ones)."""
        backbone_mask = (attention_mask_4d(attention_mask, self.backbone)
                         if self.device_masks and attention_mask is not None else attention_mask)
        kwargs = {"input_ids": input_ids, "attention_mask": backbone_mask}
        if self.use_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(**kwargs, output_hidden_states=self.head.needs_hidden_states, return_dict=True)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = self.head.pool(out.last_hidden_state, mask, out.hidden_states)
        return self.head(pooled)


# ----------------------------------------------------------------------------- optimiser groups


def layer_depth(name: str, config) -> int:
    """Depth of a backbone parameter: 0 embeddings, i for encoder layer i (1-based), L for the rest.

    Encoder-level parameters outside the layers (DeBERTa's relative position embeddings and their
    LayerNorm, ALBERT's embedding projection) count as embeddings. An ALBERT layer group shared by
    several layers counts as the highest layer that uses it.
    """
    n_layers = config.num_hidden_layers
    m = _ALBERT_GROUP.search(name)
    if m:
        per_group = n_layers // max(1, getattr(config, "num_hidden_groups", 1))
        return (int(m.group(1)) + 1) * per_group
    m = _LAYER.search(name)
    if m:
        return int(m.group(1)) + 1
    if "embedding" in name or name.startswith("encoder."):
        return 0
    return n_layers


def apply_freezing(module: Classifier, freeze_embeddings: bool, freeze_layers: int) -> None:
    """requires_grad False for the embeddings and/or the lowest `freeze_layers` layers, and for the
    backbone's own pooler, which no head uses (so it would only collect weight decay)."""
    config = module.backbone.config
    for name, p in module.backbone.named_parameters():
        depth = layer_depth(name, config)
        frozen = (freeze_embeddings and depth == 0) or (1 <= depth <= freeze_layers) or name.startswith("pooler")
        if frozen:
            p.requires_grad_(False)


def param_groups(module: Classifier, lr: float, head_lr: float, llrd: float, weight_decay: float) -> list[dict]:
    """AdamW groups: one per (depth, decay) in the backbone plus the head's.

    Depth d gets lr * llrd ** (L - d): the top layer lr, the embeddings the lowest. Biases and
    norm weights (every 1-D parameter) get no weight decay. Frozen parameters are left out.
    Each group carries a "name" ("embeddings", "layer3", "head") for inspection.
    """
    n_layers = module.backbone.config.num_hidden_layers
    groups: dict[tuple[str, bool], dict] = {}

    def add(key: str, group_lr: float, p: torch.nn.Parameter) -> None:
        decay = p.ndim >= 2
        g = groups.setdefault((key, decay), {"name": key, "params": [], "lr": group_lr,
                                             "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)

    for name, p in module.backbone.named_parameters():
        if p.requires_grad:
            d = layer_depth(name, module.backbone.config)
            add("embeddings" if d == 0 else f"layer{d}", lr * llrd ** (n_layers - d), p)
    for p in module.head.parameters():
        if p.requires_grad:
            add("head", head_lr, p)
    return list(groups.values())
