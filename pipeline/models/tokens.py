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

Batching: a batch is padded to its longest row rounded up to PAD_MULTIPLE, or, with length buckets
(compiled layers, which compile once per shape), to one of a few BUCKETS; with static rows a short
batch is filled up to the fixed row count with copies of its first row that carry weight 0 and
whose outputs are dropped. Feed turns planned batches into model inputs, collated on the host
(CPU) or gathered on the device from the rows' token ids packed there once (CUDA: no host work
and no copy per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..data import Split, Table

CHUNK = 4096          # rows per tokenizer call: bounds the memory of the Python lists it returns
BUCKET_BATCHES = 50   # training batches sorted by length together, then shuffled
# batches are padded to a multiple of this: far fewer distinct shapes for oneDNN to build kernels
# for (the first prediction pass over MRPC's test set ran 1.2x faster) and AMX-friendly tile sizes
PAD_MULTIPLE = 8
# length buckets: 16, 24, 32, 48, 64, 96, 128, ... (steps of 1.5x / 1.33x: a batch pads at most a
# third more than its longest row, and max_length 128 compiles 7 widths, 512 eleven)
BUCKETS = tuple(sorted({m << k for k in range(1, 17) for m in (8, 12)}))


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


def predict_batches(lengths: np.ndarray, batch_size: int, max_tokens: int = 0,
                    width: Optional[Callable[[int], int]] = None) -> list[np.ndarray]:
    """Row indices sorted by length (longest first, so memory peaks at once), cut into batches of
    batch_size rows, or with max_tokens > 0 of max_tokens // (padded width of the batch's first,
    longest row) rows: short rows run in big batches. width(longest) -> padded width."""
    order = np.argsort(-lengths, kind="stable")
    if max_tokens <= 0:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    width = width or (lambda n: n)
    batches, i = [], 0
    while i < len(order):
        n = max(1, max_tokens // width(int(lengths[order[i]])))
        batches.append(order[i:i + n])
        i += n
    return batches


def batch_width(longest: int, max_width: int, buckets: bool = False) -> int:
    """The padded width of a batch whose longest row has `longest` tokens: rounded up to
    PAD_MULTIPLE, or to the next of BUCKETS, but never above max_width (the max_length the rows
    were cut to, within the model's limit) nor below longest."""
    if buckets:
        up = next((b for b in BUCKETS if b >= longest), longest)
    else:
        up = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    return max(longest, min(up, max_width))


def collate(enc: Encoded, rows: np.ndarray, pad_id: int, device: torch.device,
            max_width: int, width: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Rows -> padded tensors (B, T): T is `width`, or the longest row of this batch rounded up to
    PAD_MULTIPLE but never above max_width (batch_width)."""
    longest = int(enc.lengths[rows].max())
    width = batch_width(longest, max_width) if width is None else max(width, longest)
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


# ----------------------------------------------------------------------------- feeding the model


@dataclass
class Micro:
    """One batch as it runs: its real rows, its padded width, and the rows it runs with (size >=
    len(rows); the rest are weight-0 copies of rows[0]). start: where its rows begin in the order
    a device feed uploaded."""
    rows: np.ndarray
    width: int
    size: int
    start: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.size, self.width

    def padded(self) -> np.ndarray:
        if self.size == len(self.rows):
            return self.rows
        return np.concatenate([self.rows, np.full(self.size - len(self.rows), self.rows[0], dtype=self.rows.dtype)])


class DeviceTokens:
    """The token ids of an Encoded packed on a device (one flat tensor + row offsets); batches are
    gathered there, so a step needs no host-side collation and no host-to-device copy."""

    def __init__(self, enc: Encoded, device: torch.device):
        lengths = np.asarray(enc.lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        flat = np.concatenate(enc.ids).astype(np.int64) if len(enc) else np.zeros(1, np.int64)
        self.device = device
        self.ids = torch.from_numpy(flat).to(device)
        self.types = (torch.from_numpy(np.concatenate(enc.types).astype(np.int64)).to(device)
                      if enc.types is not None and len(enc) else None)
        self.offsets = torch.from_numpy(offsets).to(device)
        self.lengths = torch.from_numpy(lengths).to(device)

    def gather(self, rows: torch.Tensor, width: int, pad_id: int) -> dict[str, torch.Tensor]:
        """rows: (B,) int64 on the device -> the tensors collate gives for them at this width."""
        pos = torch.arange(width, device=self.device)
        mask = pos[None, :] < self.lengths[rows][:, None]
        index = (self.offsets[rows][:, None] + pos[None, :]).clamp_(max=self.ids.numel() - 1)
        out = {"input_ids": self.ids[index].masked_fill_(~mask, pad_id), "attention_mask": mask.long()}
        if self.types is not None:
            out["token_type_ids"] = self.types[index].masked_fill_(~mask, 0)
        return out


class Feed:
    """The rows of one Encoded as model inputs (and, for training, targets and weights).

    Widths: batch_width (PAD_MULTIPLE, or BUCKETS with buckets). static_rows: every batch runs
    with a fixed row count. on_device: ids (and targets) live on the device and batches are
    gathered there from an order uploaded once per plan; else each batch is collated on the host,
    exactly as before these options existed."""

    def __init__(self, enc: Encoded, pad_id: int, device: torch.device, max_width: int, buckets: bool = False,
                 static_rows: bool = False, on_device: bool = False,
                 y: Optional[torch.Tensor] = None, w: Optional[torch.Tensor] = None):
        self.enc, self.pad_id, self.device, self.max_width = enc, pad_id, device, max_width
        self.buckets, self.static_rows = buckets, static_rows
        self.y, self.w = y, w
        self.tokens = DeviceTokens(enc, device) if on_device else None
        if on_device and y is not None:
            self.y, self.w = y.to(device), w.to(device)
        self._order: Optional[torch.Tensor] = None
        self._keep: Optional[torch.Tensor] = None

    def width(self, longest: int) -> int:
        return batch_width(longest, self.max_width, self.buckets)

    def plan(self, batches: list[list[np.ndarray]], size: Callable[[Micro], int]) -> list[list[Micro]]:
        """Row batches (grouped, e.g. the micro-batches of each optimiser step) -> Micro batches;
        size(micro) gives the row count a batch runs with under static_rows. A device feed
        uploads the whole plan's row order once."""
        plan = []
        for group in batches:
            plan.append([])
            for rows in group:
                m = Micro(rows, self.width(int(self.enc.lengths[rows].max())), len(rows))
                if self.static_rows:
                    m.size = max(len(rows), size(m))
                plan[-1].append(m)
        if self.tokens is not None:
            self._upload([m for group in plan for m in group])
        return plan

    def _upload(self, micros: list[Micro]) -> None:
        start = 0
        for m in micros:
            m.start, start = start, start + m.size
        order = np.concatenate([m.padded() for m in micros]) if micros else np.zeros(0, np.int64)
        keep = np.concatenate([np.arange(m.size) < len(m.rows) for m in micros]) if micros else np.zeros(0, bool)
        # one blocking copy per plan (an epoch, a prediction pass), none per batch
        self._order = torch.from_numpy(order.astype(np.int64)).to(self.device)
        self._keep = torch.from_numpy(keep.astype(np.float32)).to(self.device)

    def rows(self, m: Micro) -> torch.Tensor:
        """The real rows of batch m as a tensor on the device (for placing its outputs)."""
        if self.tokens is None:
            return torch.from_numpy(m.rows).to(self.device)
        return self._order[m.start:m.start + len(m.rows)]

    def inputs(self, m: Micro) -> dict[str, Optional[torch.Tensor]]:
        """The model's inputs for batch m, (m.size, m.width) each. On the device, a batch without
        padding gets attention_mask None, which the backbone treats as all ones without reading
        the mask back to the host (transformers' check of a full mask is a sync)."""
        if self.tokens is None:
            return collate(self.enc, m.padded(), self.pad_id, self.device, self.max_width, m.width)
        batch = self.tokens.gather(self._order[m.start:m.start + m.size], m.width, self.pad_id)
        if self.unmasked(m):
            batch["attention_mask"] = None
        return batch

    def unmasked(self, m: Micro) -> bool:
        """Whether batch m runs without a mask (on the device, every row full: host-side lengths)."""
        return self.tokens is not None and int(self.enc.lengths[m.rows].min()) == m.width

    def variant(self, m: Micro) -> tuple[int, int, bool]:
        """What a compiled module compiles once for: the batch's shape, and whether it has a mask
        (a batch without one is another graph)."""
        return (*m.shape, self.unmasked(m))

    def targets(self, m: Micro) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, w) of batch m on the device; the padding rows weigh 0."""
        if self.tokens is None:
            rows_t = torch.from_numpy(m.padded())
            y, w = self.y[rows_t].to(self.device), self.w[rows_t].to(self.device)
            if m.size > len(m.rows):
                w = w * (torch.arange(m.size) < len(m.rows)).to(w.dtype).to(self.device)
            return y, w
        rows = self._order[m.start:m.start + m.size]
        return self.y[rows], self.w[rows] * self._keep[m.start:m.start + m.size]
