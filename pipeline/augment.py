"""Offline augmentation of a fold's training rows (a model's `augment:` config).

The driver calls `augment_split` on fold k's training part only, never on its validation part or
the test set, so no augmented row reaches the OOF or test predictions. Each augmented row is a
row of a derived Table ("augmented") whose views come from the same functions the preprocess stage
ran (views.recorded_views); its label is its source row's label (any task type); its id is the
source id plus `~aug<c>` (copy c) or `~swap`. The rows are a pure function of the fold's training
rows, the config and the seed (the model's seed + fold): reruns make the same rows.

Ops, per copy and per text (EDA, Wei & Zou 2019, on whitespace words), in this order: synonym
(WordNet), random_insert (a synonym of a random word of the text, or the word itself without
WordNet), random_swap, random_delete; then synonym by a masked LM where WordNet is not installed
(synonyms: mlm) and the mlm op (contextual substitution, pipeline/models/mlm.py, imported only when used). `swap`: for pairs, one more copy of every row as (b, a).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from .config import AugmentConfig
from .data import Split, Table
from .errors import PipelineError
from .views import Views  # (text_a, text_b) -> table views, made with the recorded lemmatiser and segmenter

log = logging.getLogger("pipeline.augment")


def augment_split(train: Split, cfg: AugmentConfig, seed: int, views: Views, name: str = "augmented") -> Split:
    """`train` followed by its augmented rows; y (n + n_aug, ...) repeats the source rows' labels
    (and sample weights). Unchanged when the config adds no rows."""
    if not cfg.active or len(train) == 0:
        return train
    if cfg.synonym and cfg.synonyms == "none":
        log.warning("%s: augment.synonym skipped: neither nltk's WordNet corpus nor a masked LM "
                    "(augment.mlm_backbone or a pretrain section)", train.name)
    a, b, ids, src = augmented_texts(train, cfg, seed)
    table = Table(name, ids, views(a, b), None if train.y is None else train.y[src],
                  segmented=any(t.segmented for t, _ in train.parts))
    y = None if train.y is None else np.concatenate([train.y, table.y])
    w = None if train.sample_weight is None else np.concatenate([train.sample_weight, train.sample_weight[src]])
    return Split(train.parts + [(table, np.arange(len(table)))], y, name=train.name, sample_weight=w)


def augmented_texts(train: Split, cfg: AugmentConfig,
                    seed: int) -> tuple[list[str], Optional[list[str]], list[str], np.ndarray]:
    """(text_a (m,), text_b (m,) or None, ids (m,), source (m,) positions in `train`) of the m
    augmented rows: `copies` rounds of the ops over every row, then the swapped pairs."""
    a, b = train.texts("raw")
    source_ids = [t.ids[i] for t, rows in train.parts for i in rows]
    rng = np.random.default_rng(seed)
    out_a, out_b, ids, src = [], None if b is None else [], [], []
    for c in range(cfg.copies):
        out_a += transform(a, cfg, rng)
        if b is not None:
            out_b += transform(b, cfg, rng)
        ids += [f"{i}~aug{c}" for i in source_ids]
        src.append(np.arange(len(a)))
    if cfg.swap:
        if b is None:
            raise PipelineError("augment.swap needs a pair task (data.text_b): a single text has no order to swap")
        out_a, out_b = out_a + b, out_b + a
        ids += [f"{i}~swap" for i in source_ids]
        src.append(np.arange(len(a)))
    return out_a, out_b, ids, np.concatenate(src)


def transform(texts: list[str], cfg: AugmentConfig, rng: np.random.Generator) -> list[str]:
    """One augmented copy of each text (n,) -> (n,)."""
    synonyms = wordnet_synonyms if cfg.synonyms == "wordnet" else None
    out = [eda(t, cfg, rng, synonyms) for t in texts]
    # synonyms without WordNet: the masked LM's guesses replace `synonym` of the words, then the
    # mlm op replaces its own share
    for rate in (cfg.synonym if cfg.synonyms == "mlm" else 0.0, cfg.mlm):
        if rate:
            from .models.mlm import substitute  # the masked LM's code loads only for models that use it

            out = substitute(out, cfg.mlm_backbone, rate, int(rng.integers(2**31)))
    return out


def eda(text: str, cfg: AugmentConfig, rng: np.random.Generator,
        synonyms: Optional[Callable[[str], list[str]]]) -> str:
    """The EDA ops with a rate above 0, in order, on the whitespace words of `text`."""
    words = text.split()
    if not words:
        return text
    if cfg.synonym and synonyms is not None:
        words = replace_synonyms(words, _count(cfg.synonym, words), rng, synonyms)
    if cfg.random_insert:
        words = insert_words(words, _count(cfg.random_insert, words), rng, synonyms)
    if cfg.random_swap:
        words = swap_words(words, _count(cfg.random_swap, words), rng)
    if cfg.random_delete:
        words = delete_words(words, cfg.random_delete, rng)
    return " ".join(words)


def _count(rate: float, words: list[str]) -> int:
    """How many words an op touches: rate x length, at least 1."""
    return max(1, int(round(rate * len(words))))


def replace_synonyms(words: list[str], n: int, rng: np.random.Generator,
                     synonyms: Callable[[str], list[str]]) -> list[str]:
    words = list(words)
    for i in rng.permutation(len(words))[:n]:
        options = synonyms(words[i])
        if options:
            words[i] = options[int(rng.integers(len(options)))]
    return words


def insert_words(words: list[str], n: int, rng: np.random.Generator,
                 synonyms: Optional[Callable[[str], list[str]]]) -> list[str]:
    words = list(words)
    for _ in range(n):
        word = words[int(rng.integers(len(words)))]
        options = synonyms(word) if synonyms is not None else []
        words.insert(int(rng.integers(len(words) + 1)), options[int(rng.integers(len(options)))] if options else word)
    return words


def swap_words(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    words = list(words)
    for _ in range(n if len(words) > 1 else 0):
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return words


def delete_words(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Each word dropped with probability `rate`; one random word is kept if all would go."""
    keep = [w for w, u in zip(words, rng.random(len(words))) if u >= rate]
    return keep or [words[int(rng.integers(len(words)))]]


def wordnet_synonyms(word: str) -> list[str]:
    """WordNet's synonyms of `word` (other than itself), sorted; needs nltk's corpus (checked
    when the config is loaded)."""
    from nltk.corpus import wordnet

    names = {lem.name().replace("_", " ") for s in wordnet.synsets(word) for lem in s.lemmas()}
    return sorted(n for n in names if n.lower() != word.lower())
