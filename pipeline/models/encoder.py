"""Frozen sentence embeddings: a pretrained encoder, mean-pooled over the attention mask and
L2-normalised, as features for classical models (embed_lr's design, pair_lgbm's embed cosine).

This is how sentence-transformer checkpoints such as the embedded all-MiniLM-L6-v2 are meant to be
used. Nothing is learned from labels, so each table's embeddings are computed once per process (in
the cache the driver hands to every fold and model) and no fold sees another fold's labels through
them. torch and transformers are imported inside the functions that run the encoder, so importing
this module (the classical kinds do) loads neither.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..data import Split, Table
from .params import TransformerParams


def load_encoder(cache: dict, backbone: str):
    """(tokenizer, eval-mode AutoModel) for `backbone`, loaded once per process, on the process's
    GPU where it has one (a GPU slot, a local run on a GPU machine; a CPU task sees none), else on
    the CPU: a 12-layer encoder embeds a table in seconds there and in minutes on a few cores.

    from_pretrained draws weights the checkpoint lacks (a sentence encoder's unused pooler) from
    torch's global RNG: the draw is kept from the process, so loading moves no later seeded run."""
    key = ("encoder", backbone)
    if key not in cache:
        # deferred: backbone imports torch and transformers, which a model without embeddings never needs
        from .backbone import default_device, kept_rng, load_config, load_pretrained, load_tokenizer, resolve_backbone

        source, local_only = resolve_backbone(backbone)
        config = load_config(source, local_only, backbone, TransformerParams(backbone=backbone))
        tokenizer = load_tokenizer(source, local_only, backbone)
        with kept_rng():
            encoder = load_pretrained(source, local_only, backbone, config).eval()
        cache[key] = (tokenizer, encoder.to(default_device()))
    return cache[key]


def embed_texts(tokenizer, encoder, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """(n, hidden) float32 unit-length mean-pooled embeddings, computed in float32 on the
    encoder's device; batches sorted by length."""
    import torch

    from .tokens import collate, encode_texts, predict_batches

    enc = encode_texts(tokenizer, texts, None, max_length, "head")
    pad = tokenizer.pad_token_id or 0
    device = encoder.get_input_embeddings().weight.device
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for rows in predict_batches(enc.lengths, batch_size):
            batch = collate(enc, rows, pad, device, max_length)
            batch.pop("token_type_ids", None)  # single texts: all zeros anyway
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
    return out


def table_embeddings(cache: dict, backbone: str, table: Table, view: str, max_length: int,
                     batch_size: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Each side of every row of `table`: ((n, H), (n, H) or None), computed once per process."""
    key = ("embeddings", backbone, max_length, view, table.name, id(table))
    hit = cache.get(key)
    if hit is not None and hit[0] is table:  # the entry holds the table, so its id is not reused
        return hit[1]
    tokenizer, encoder = load_encoder(cache, backbone)
    a, b = table.views[view]
    sides = tuple(None if t is None else embed_texts(tokenizer, encoder, t, max_length, batch_size) for t in (a, b))
    cache[key] = (table, sides)
    return sides


def split_embeddings(cache: dict, backbone: str, split: Split, view: str, max_length: int = 128,
                     batch_size: int = 64) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The split's rows, in its order: ((n, H), (n, H) or None)."""
    parts = [(table_embeddings(cache, backbone, table, view, max_length, batch_size), rows)
             for table, rows in split.parts]
    a = np.concatenate([sides[0][rows] for sides, rows in parts])
    b = None if parts[0][0][1] is None else np.concatenate([sides[1][rows] for sides, rows in parts])
    return a, b


def pair_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 1) cosine of unit-length row pairs."""
    return (a * b).sum(axis=1, keepdims=True)
