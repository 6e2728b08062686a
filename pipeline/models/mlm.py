"""Masked-language modelling of a BERT-family backbone: the model with its MLM head, whole-word
masking, and contextual word substitution (an augmentation).

`masked_lm(source)` loads any backbone the transformer models take (the embedded package, a local
folder, the pretrain stage's output) as a *ForMaskedLM. A checkpoint without an MLM head (a
sentence-transformer such as all-MiniLM-L6-v2) gets a new one: the transform layer freshly
initialised under the seed, the decoder weight tied to the input word embeddings (one tensor).
The pretrain stage saves its head beside the encoder as mlm_head.safetensors, so a pretrained
folder loads as a plain encoder through AutoModel and with its trained head here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForMaskedLM

from ..errors import PipelineError
from ..fileio import safe_load_safetensors
from .backbone import load_error, load_tokenizer, quiet_loading, resolve_backbone, seeded

MLM_HEAD = "mlm_head.safetensors"   # the trained MLM head of a pretrain output, beside model.safetensors
IGNORE = -100                       # label of a token that is not predicted
CANDIDATES = 50                     # substitute(): top predictions searched for a usable word


# ----------------------------------------------------------------------------- the model


def masked_lm(source: str, seed: int = 0) -> tuple[object, torch.nn.Module]:
    """(fast tokenizer, *ForMaskedLM in float32, eval mode) of a backbone name or folder. A missing
    MLM head is created under `seed` with its decoder tied to the word embeddings."""
    path, local_only = resolve_backbone(source)
    tokenizer = load_tokenizer(path, local_only, source)
    try:
        with seeded(seed), quiet_loading(report=False):
            model, info = AutoModelForMaskedLM.from_pretrained(path, local_files_only=local_only, dtype=torch.float32,
                                                               output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        raise load_error(source, "weights as a masked language model", path, local_only, e) from None
    saved_head = Path(path) / MLM_HEAD
    if saved_head.is_file():
        model.load_state_dict(safe_load_safetensors(saved_head), strict=False)
    elif head_missing(model, info["missing_keys"]):
        tie_decoder(model)
    return tokenizer, model.eval()


def head_missing(model: torch.nn.Module, missing: list[str]) -> bool:
    """Whether the checkpoint lacked MLM-head weights (keys outside the base model)."""
    prefix = model.base_model_prefix + "."
    return any(not k.startswith(prefix) for k in missing)


def tie_decoder(model: torch.nn.Module) -> None:
    """The output projection's weight becomes the input word-embedding tensor itself."""
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out.weight is not emb.weight:
        out.weight = emb.weight


def head_module(model: torch.nn.Module) -> torch.nn.Module:
    """The MLM head (BERT's `cls`, RoBERTa's `lm_head`): hidden states (..., H) -> logits (..., V)."""
    heads = [m for name, m in model.named_children() if name != model.base_model_prefix]
    if len(heads) != 1:
        raise PipelineError(f"{type(model).__name__}: expected one MLM head beside the encoder, "
                            f"found {[n for n, _ in model.named_children()]}")
    return heads[0]


def predicted_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, V), labels (N,)) of the N predicted tokens of a masked batch (input_ids,
    attention_mask, labels, each (B, T); optionally "picked" (N,), the flat positions of the
    predicted tokens, found on the host so that a CUDA step never waits to learn N): the head runs
    on those tokens only, not on all B * T (with a 30k vocabulary the head costs as much as the
    encoder when run everywhere). attention_mask may be the backbone's 4D mask (heads.attention_mask_4d)."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    picked = batch["picked"] if "picked" in batch else picked_positions(batch["labels"])
    return (head_module(model)(hidden.flatten(0, 1).index_select(0, picked)),
            batch["labels"].flatten().index_select(0, picked))


def picked_positions(labels: torch.Tensor) -> torch.Tensor:
    """labels (B, T) -> (N,) int64: the flat positions of the predicted tokens, in row-major order
    (the rows boolean indexing picks, in its order)."""
    return (labels.flatten() != IGNORE).nonzero().squeeze(1)


def mlm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean cross-entropy over the predicted tokens: model(**batch).loss, computed faster."""
    logits, labels = predicted_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The MLM head's tensors (not the base model's, not the tied decoder weight), contiguous copies."""
    prefix = model.base_model_prefix + "."
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix) or (tied and value.data_ptr() == model.get_input_embeddings().weight.data_ptr()):
            continue
        state[key] = value.detach().to("cpu").clone().contiguous()
    return state


def save_head(model: torch.nn.Module, path: Path) -> None:
    save_file(head_state(model), str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- whole-word masking


@dataclass
class Corpus:
    """Encoded texts. ids[i]: (len_i,) int64 token ids, special tokens included; words[i]: (len_i,)
    int64 word index of each token within its text (-1: a special token, never masked)."""
    ids: list[np.ndarray]
    words: list[np.ndarray]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)


def encode_corpus(tokenizer, texts: list[str], max_length: int, whole_word: bool = True) -> Corpus:
    """Texts -> token ids cut to max_length and each token's word (the tokenizer's word_ids: the
    pieces of one word share an index). whole_word=False: every token is its own word."""
    ids, words = [], []
    for start in range(0, len(texts), 1000):
        enc = tokenizer(texts[start:start + 1000], truncation=True, max_length=max_length,
                        return_special_tokens_mask=True, verbose=False)
        for i, row in enumerate(enc["input_ids"]):
            w = np.array([-1 if x is None else x for x in enc.word_ids(i)], dtype=np.int64)
            w[np.asarray(enc["special_tokens_mask"][i], dtype=bool)] = -1
            if not whole_word:
                w = np.where(w >= 0, np.arange(len(w)), -1)
            ids.append(np.asarray(row, dtype=np.int64))
            words.append(w)
    return Corpus(ids, words)


def whole_word_mask(ids: np.ndarray, words: np.ndarray, probability: float, rng: np.random.Generator,
                    mask_id: int, random_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One text (T,) -> (inputs (T,), labels (T,)): round(probability * words) words (at least one)
    are chosen and every piece of each is predicted; of those tokens 80% become the mask token, 10%
    a random token of `random_ids` (no special tokens), 10% stay. labels: the original id where
    predicted, else -100. Special tokens (word -1) are never chosen."""
    unique = np.unique(words[words >= 0])
    labels = np.full_like(ids, IGNORE)
    if len(unique) == 0:
        return ids.copy(), labels
    chosen = rng.choice(unique, size=max(1, int(round(probability * len(unique)))), replace=False)
    picked = np.isin(words, chosen)
    labels[picked] = ids[picked]
    draw = rng.random(len(ids))
    inputs = ids.copy()
    inputs[picked & (draw < 0.8)] = mask_id
    swap = picked & (draw >= 0.8) & (draw < 0.9)
    inputs[swap] = rng.choice(random_ids, size=int(swap.sum()))
    return inputs, labels


def random_token_ids(tokenizer) -> np.ndarray:
    """Ids a masked token may be swapped for: the vocabulary less the special tokens."""
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


def masked_batch(corpus: Corpus, rows: np.ndarray, probability: float, rng: np.random.Generator,
                 tokenizer, random_ids: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows of the corpus, masked and padded: input_ids, attention_mask, labels, each (B, T)."""
    masked = [whole_word_mask(corpus.ids[r], corpus.words[r], probability, rng, tokenizer.mask_token_id, random_ids)
              for r in rows]
    width = max(len(x) for x, _ in masked)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    shape = (len(rows), width)
    out = {"input_ids": np.full(shape, pad, np.int64), "attention_mask": np.zeros(shape, np.int64),
           "labels": np.full(shape, IGNORE, np.int64)}
    for i, (inputs, labels) in enumerate(masked):
        out["input_ids"][i, :len(inputs)] = inputs
        out["attention_mask"][i, :len(inputs)] = 1
        out["labels"][i, :len(labels)] = labels
    return {k: torch.from_numpy(v) for k, v in out.items()}


def masked_accuracy(tokenizer, model, texts: list[str], probability: float = 0.15, seed: int = 0,
                    max_length: int = 128, batch_size: int = 64) -> float:
    """Share of the predicted tokens (whole-word masks seeded by (seed, batch)) whose argmax is the
    original token: the same masks for any model with this tokenizer, so before/after compare."""
    corpus = encode_corpus(tokenizer, texts, max_length)
    random_ids = random_token_ids(tokenizer)
    device = next(model.parameters()).device
    hits = total = 0
    model.eval()
    with torch.inference_mode():
        for b, start in enumerate(range(0, len(texts), batch_size)):
            rows = np.arange(start, min(start + batch_size, len(texts)))
            batch = masked_batch(corpus, rows, probability, np.random.default_rng([seed, b]), tokenizer, random_ids)
            logits, labels = predicted_logits(model, {k: v.to(device) for k, v in batch.items()})
            hits += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
    return hits / max(total, 1)


# ----------------------------------------------------------------------------- substitution

_WORD = re.compile(r"^(\W*)(\w(?:.*\w)?)(\W*)$")


def substitute(texts: list[str], backbone: str, rate: float, seed: int, batch_size: int = 32,
               max_length: int = 256) -> list[str]:
    """Contextual word substitution: in each text, round(rate * words) of its whitespace-separated
    words (those with a letter or digit; punctuation around them kept) are masked together and each
    is replaced by the MLM's top single-token prediction other than the word itself (case of the
    first letter kept). Seeded per text by (seed, index); batched. A word beyond max_length tokens
    stays as it was."""
    if not 0 <= rate <= 1:
        raise PipelineError(f"substitute: rate must be between 0 and 1, got {rate}")
    tokenizer, model = masked_lm(backbone, seed)
    plans = [_plan(text, rate, np.random.default_rng([seed, i])) for i, text in enumerate(texts)]
    out = list(texts)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = range(start, min(start + batch_size, len(texts)))
            for i, text in zip(batch, _fill(tokenizer, model, [plans[i] for i in batch], max_length)):
                out[i] = text
    return out


@dataclass
class _Plan:
    words: list[str]
    chosen: list[int]   # positions in `words` to replace, in order


def _plan(text: str, rate: float, rng: np.random.Generator) -> _Plan:
    words = text.split()
    eligible = [i for i, w in enumerate(words) if _WORD.match(w)]
    k = int(round(rate * len(eligible)))
    return _Plan(words, sorted(rng.choice(eligible, size=k, replace=False).tolist()) if k else [])


def _fill(tokenizer, model, plans: list[_Plan], max_length: int) -> list[str]:
    """The texts of `plans` with their chosen words replaced by the model's predictions."""
    masked = [_masked_text(p, tokenizer.mask_token) for p in plans]
    enc = tokenizer(masked, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    out = []
    for row, plan in enumerate(plans):
        positions = (enc["input_ids"][row] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        words = list(plan.words)
        for pos, i in zip(positions, plan.chosen):
            words[i] = _replace(words[i], logits[row, pos], tokenizer)
        out.append(" ".join(words))
    return out


def _masked_text(plan: _Plan, mask: str) -> str:
    """The text with each chosen word replaced by the mask token (a mask token already in the text
    is defused, so positions and chosen words stay paired)."""
    chosen = set(plan.chosen)
    words = [w.replace(mask, mask.lower() + "_") for w in plan.words]
    return " ".join(_WORD.sub(lambda m: m.group(1) + mask + m.group(3), w) if i in chosen else w
                    for i, w in enumerate(words))


def _replace(word: str, logits: torch.Tensor, tokenizer) -> str:
    """`word` with its core replaced by the best candidate token that is a whole word and not the core."""
    pre, core, post = _WORD.match(word).groups()
    for token_id in torch.topk(logits, min(CANDIDATES, logits.shape[-1])).indices.tolist():
        new = _as_word(tokenizer, token_id)
        if new is not None and new.lower() != core.lower():
            return pre + (new[:1].upper() + new[1:] if core[:1].isupper() else new) + post
    return word


def _as_word(tokenizer, token_id: int) -> Optional[str]:
    """The token as a word on its own, or None (a special token, a word piece, punctuation)."""
    if token_id in tokenizer.all_special_ids:
        return None
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece.startswith("##"):   # WordPiece continuation
        return None
    text = tokenizer.decode([token_id]).strip()
    return text if text and _WORD.match(text) and " " not in text else None
