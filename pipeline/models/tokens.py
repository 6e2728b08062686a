"""Token ids for transformer models: tokenise each table once, truncate, batch by length.

A table is tokenised whole, once per (tokenizer, max length, truncation, view, table), and kept in
the process-wide cache that the driver hands to every fold and model; a Split gathers its rows.

Truncation keeps every special token the tokenizer's own template adds (so pair separators,
RoBERTa's double </s> and token types come from the tokenizer) and cuts text tokens only:
  head       keep the first tokens
  tail       keep the last tokens
  head_tail  keep the first quarter of the budget and the last three quarters (Sun et al. 2019,
             "How to fine-tune BERT for text classification": head+tail beats either alone)
For pairs the budget is shared longest-first: the longer text gives up tokens until both fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..data import Split, Table

CHUNK = 4096          # rows per tokenizer call: bounds the memory of the Python lists it returns
BUCKET_BATCHES = 50   # training batches sorted by length together, then shuffled
# batches are padded to a multiple of this: far fewer distinct shapes for oneDNN to build kernels
# for (the first prediction pass over MRPC's test set ran 1.2x faster) and AMX-friendly tile sizes
PAD_MULTIPLE = 8


@dataclass
class Encoded:
    """Token ids of n rows. ids[i]: (len_i,) int32; types[i]: (len_i,) int8 or None; lengths: (n,)."""
    ids: list
    types: Optional[list]
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------- truncation


def keep_counts(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Text tokens to keep from a and b so that their sum fits `budget`, cutting the longer first."""
    if len_a + len_b <= budget:
        return len_a, len_b
    half = budget // 2
    if len_a <= half:
        return len_a, budget - len_a
    if len_b <= budget - half:
        return budget - len_b, len_b
    return half, budget - half


def keep_positions(n: int, k: int, strategy: str) -> np.ndarray:
    """Which of n text tokens to keep (k of them, in order) under `strategy`."""
    if k >= n:
        return np.arange(n)
    if strategy == "head":
        return np.arange(k)
    if strategy == "tail":
        return np.arange(n - k, n)
    h = k // 4
    return np.concatenate([np.arange(h), np.arange(n - (k - h), n)])


def truncate(ids: list[int], types: Optional[list[int]], seq_ids: list[Optional[int]],
             max_length: int, strategy: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One encoded row (special tokens included) -> at most max_length tokens, specials kept."""
    seq = np.array([-1 if s is None else s for s in seq_ids])
    budget = max_length - int((seq == -1).sum())
    pos_a, pos_b = np.flatnonzero(seq == 0), np.flatnonzero(seq == 1)
    k_a, k_b = keep_counts(len(pos_a), len(pos_b), max(budget, 0))
    keep = np.zeros(len(seq), dtype=bool)
    keep[seq == -1] = True
    keep[pos_a[keep_positions(len(pos_a), k_a, strategy)]] = True
    keep[pos_b[keep_positions(len(pos_b), k_b, strategy)]] = True
    out_types = None if types is None else np.asarray(types, dtype=np.int8)[keep]
    return np.asarray(ids, dtype=np.int32)[keep], out_types


# ----------------------------------------------------------------------------- tokenising


def _tokenize(tokenizer, a: list[str], b: Optional[list[str]]):
    """The tokenizer's own (pair) encoding, special tokens included, nothing truncated yet."""
    return tokenizer(a, b, add_special_tokens=True, truncation=False, padding=False,
                     return_attention_mask=False, verbose=False)


def _encode_chunk(tokenizer, a: list[str], b: Optional[list[str]], max_length: int, strategy: str):
    enc = _tokenize(tokenizer, a, b)
    types = enc.get("token_type_ids")
    ids_out, types_out = [], ([] if types is not None else None)
    for i, ids in enumerate(enc["input_ids"]):
        t = None if types is None else types[i]
        if len(ids) <= max_length:  # the common case needs no sequence ids
            row_ids, row_types = np.asarray(ids, dtype=np.int32), None if t is None else np.asarray(t, np.int8)
        else:
            row_ids, row_types = truncate(ids, t, enc.sequence_ids(i), max_length, strategy)
        ids_out.append(row_ids)
        if types_out is not None:
            types_out.append(row_types)
    return ids_out, types_out


def encode_texts(tokenizer, a: list[str], b: Optional[list[str]], max_length: int, strategy: str) -> Encoded:
    """n texts (or pairs) -> Encoded, each row at most max_length tokens."""
    chunks = [_encode_chunk(tokenizer, a[s:s + CHUNK], None if b is None else b[s:s + CHUNK], max_length, strategy)
              for s in range(0, len(a), CHUNK)]
    ids = [x for chunk_ids, _ in chunks for x in chunk_ids]
    with_types = bool(chunks) and all(chunk_types is not None for _, chunk_types in chunks)
    types = [x for _, chunk_types in chunks for x in chunk_types] if with_types else None
    return Encoded(ids, types, np.array([len(x) for x in ids], dtype=np.int64))


def encode_table(cache: dict, tok_key: str, tokenizer, table: Table, view: str,
                 max_length: int, strategy: str, swapped: bool = False) -> Encoded:
    """Every row of `table` encoded, computed once per key and kept in `cache`; `swapped` encodes
    pairs as (text_b, text_a).

    The key holds id(table) and the entry holds the table itself, so the id cannot be reused by
    another table while the entry lives.
    """
    key = ("tokens", tok_key, max_length, strategy, view, swapped, table.name, id(table))
    hit = cache.get(key)
    if hit is not None and hit[0] is table:
        return hit[1]
    a, b = table.views[view]
    if swapped:
        a, b = b, a
    enc = encode_texts(tokenizer, a, b, max_length, strategy)
    cache[key] = (table, enc)
    return enc


def encode_split(cache: dict, tok_key: str, tokenizer, split: Split, view: str,
                 max_length: int, strategy: str, swapped: bool = False) -> Encoded:
    """The rows of `split`, in its order, gathered from its tables' cached encodings."""
    parts = [(encode_table(cache, tok_key, tokenizer, table, view, max_length, strategy, swapped), rows)
             for table, rows in split.parts]
    ids = [enc.ids[i] for enc, rows in parts for i in rows]
    with_types = bool(ids) and all(enc.types is not None for enc, _ in parts)
    types = [enc.types[i] for enc, rows in parts for i in rows] if with_types else None
    return Encoded(ids, types, np.array([len(x) for x in ids], dtype=np.int64))


def concat(first: Encoded, second: Encoded) -> Encoded:
    """The rows of `first`, then those of `second`."""
    types = first.types + second.types if first.types is not None and second.types is not None else None
    return Encoded(first.ids + second.ids, types, np.concatenate([first.lengths, second.lengths]))


# ----------------------------------------------------------------------------- batching


def train_steps(lengths: np.ndarray, batch_size: int, grad_accum: int,
                rng: np.random.Generator) -> list[list[np.ndarray]]:
    """One epoch's optimiser steps, each a list of micro-batches (row index arrays).

    Shuffled buckets: rows are shuffled, cut into chunks of BUCKET_BATCHES effective batches,
    sorted by length inside a chunk (so a batch pads little), then the batch order is shuffled.
    An effective batch (batch_size * grad_accum rows) is cut into grad_accum micro-batches, so
    the rows of one step do not depend on how they are split into micro-batches.
    """
    eff = batch_size * grad_accum
    perm = rng.permutation(len(lengths))
    batches = []
    for s in range(0, len(perm), eff * BUCKET_BATCHES):
        chunk = perm[s:s + eff * BUCKET_BATCHES]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + eff] for i in range(0, len(chunk), eff))
    order = rng.permutation(len(batches))
    return [[batches[j][i:i + batch_size] for i in range(0, len(batches[j]), batch_size)] for j in order]


def predict_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices sorted by length (longest first, so memory peaks at once), cut into batches."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(enc: Encoded, rows: np.ndarray, pad_id: int, device: torch.device,
            max_width: int) -> dict[str, torch.Tensor]:
    """Rows -> padded tensors (B, T): T is the longest row of this batch rounded up to PAD_MULTIPLE,
    but never above max_width (the max_length the rows were cut to, within the model's limit)."""
    longest = int(enc.lengths[rows].max())
    width = max(longest, min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, max_width))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64) if enc.types is not None else None
    for r, i in enumerate(rows):
        n = len(enc.ids[i])
        ids[r, :n] = enc.ids[i]
        mask[r, :n] = 1
        if types is not None:
            types[r, :n] = enc.types[i]
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        out["token_type_ids"] = torch.from_numpy(types)
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}
