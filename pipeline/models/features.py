"""Text features for the classical models: TF-IDF blocks and hand-made pair features.

Every vectoriser here is fitted on the fold's training rows only (by the model that owns it).
"""
from __future__ import annotations

import difflib
import re
from typing import Optional

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from ..errors import PipelineError
from .params import TfidfParams

WORD = re.compile(r"\w+", re.UNICODE)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
CAPITAL = re.compile(r"\b[A-Z][\w-]*")
# SequenceMatcher is quadratic in the worst case: two 100k-character texts take seconds per pair.
# Its ratio is computed on the first tokens only; every other feature sees the whole text.
SEQ_MAX_TOKENS = 1000


class TfidfBlock:
    """Word and char n-gram TF-IDF; for pairs the vocabulary is fitted on both sides.

    An analyzer is off when its n-gram range is [] (the params refuse both off). One that learns no
    terms (every text is "!!!" or emoji for the word analyzer; min_df above every term's count)
    raises one PipelineError starting with `label`, or with allow_empty gives an all-zero block of
    width 0 (pair_lgbm: its cosine feature is then 0 and its surface features still carry signal).
    """

    def __init__(self, p: TfidfParams, label: str = "TF-IDF", allow_empty: bool = False):
        self.p, self.label, self.allow_empty = p, label, allow_empty

    def fit_transform(self, texts: list[str]) -> list[sp.csr_matrix]:
        """Fit on texts and return transform(texts), analysing each text once instead of twice;
        the same matrices bit for bit (sorted indices, as transform gives them)."""
        self.vectorizers_, out = [], []
        for v in self._vectorizers():
            fitted, X = self._fitted(v, texts)
            self.vectorizers_.append(fitted)
            out.append(self._empty(len(texts)) if X is None else X.tocsr())
            out[-1].sort_indices()
        return out

    @staticmethod
    def _empty(n: int) -> sp.csr_matrix:
        return sp.csr_matrix((n, 0), dtype=np.float32)

    def _vectorizers(self) -> list[TfidfVectorizer]:
        common = dict(min_df=self.p.min_df, max_features=self.p.max_features, sublinear_tf=self.p.sublinear_tf,
                      dtype=np.float32)
        out = []
        if self.p.word_ngrams:
            out.append(TfidfVectorizer(analyzer="word", ngram_range=tuple(self.p.word_ngrams),
                                       token_pattern=r"(?u)\b\w+\b", **common))
        if self.p.char_ngrams:
            out.append(TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.p.char_ngrams), **common))
        return out

    def _fitted(self, v: TfidfVectorizer, texts: list[str]) -> tuple[Optional[TfidfVectorizer], Optional[sp.spmatrix]]:
        """(v fitted on texts, their matrix); (None, None) with allow_empty when it learns no terms."""
        try:
            return v, v.fit_transform(texts)
        except ValueError:
            problem = self._no_terms(v, texts)
            if problem is None:
                raise  # not a vocabulary problem: a bug worth its traceback
        if self.allow_empty:
            return None, None
        raise PipelineError(f"{self.label}: the {v.analyzer} n-gram TF-IDF learned no terms: {problem}")

    def _no_terms(self, v: TfidfVectorizer, texts: list[str]) -> Optional[str]:
        """Why v found no vocabulary in texts, or None when it is not that."""
        analyze = v.build_analyzer()
        if not any(analyze(t) for t in texts):
            what = "a word character (letter, digit or _)" if v.analyzer == "word" else "any character"
            hint = ("; set word_ngrams: [] to use char n-grams alone" if v.analyzer == "word" and self.p.char_ngrams
                    else "")
            return f"none of the {len(texts)} training texts has {what}{hint}"
        if self.p.min_df > 1:
            return f"no term is in min_df={self.p.min_df} or more of the {len(texts)} training texts; lower min_df"
        return None

    def state(self) -> list[dict]:
        """The fitted vocabularies and idf weights, JSON-able (no pickles), one entry per analyzer
        that learned terms."""
        return [{"analyzer": v.analyzer, "vocabulary": {k: int(i) for k, i in v.vocabulary_.items()},
                 "idf": v.idf_.tolist(), "idf_dtype": v.idf_.dtype.name}
                for v in self.vectorizers_ if v is not None]

    def restored(self, state: list[dict]) -> "TfidfBlock":
        """This block fitted from a `state()`: transforms exactly as the block that wrote it."""
        saved = {entry["analyzer"]: entry for entry in state}
        self.vectorizers_ = [self._restored(v, saved.get(v.analyzer)) for v in self._vectorizers()]
        return self

    def _restored(self, v: TfidfVectorizer, entry: Optional[dict]) -> Optional[TfidfVectorizer]:
        if entry is None:
            if not self.allow_empty:
                raise PipelineError(f"{self.label}: the saved TF-IDF state lacks the {v.analyzer} analyzer")
            return None
        v.vocabulary_ = dict(entry["vocabulary"])
        v.idf_ = np.asarray(entry["idf"], dtype=entry.get("idf_dtype", "float64"))
        return v

    def transform(self, texts: list[str]) -> list[sp.csr_matrix]:
        """One (n, vocab_i) L2-normalised matrix per analyzer ((n, 0) for one that learned nothing)."""
        return [self._empty(len(texts)) if v is None else v.transform(texts).tocsr() for v in self.vectorizers_]


def sides(block: TfidfBlock, a: list[str], b: Optional[list[str]], fit: bool
          ) -> tuple[list[sp.csr_matrix], Optional[list[sp.csr_matrix]]]:
    """(va, vb): each side's TF-IDF matrices (one per analyzer; vb None for single texts), with the
    block first fitted on a + b where `fit` (each training text analysed once)."""
    if not fit:
        return block.transform(a), None if b is None else block.transform(b)
    both = block.fit_transform(a + (b or []))
    return [x[:len(a)] for x in both], None if b is None else [x[len(a):] for x in both]


def design_of(va: list[sp.csr_matrix], vb: Optional[list[sp.csr_matrix]]) -> sp.csr_matrix:
    """The TF-IDF design from each side's matrices (sides). Singles: the TF-IDF rows. Pairs:
    [|va - vb|, va * vb] per analyzer, order-invariant.

    Returns (n, d) CSR.
    """
    if vb is None:
        return sp.hstack(va, format="csr")
    parts = []
    for x, y in zip(va, vb):
        parts += [abs(x - y), x.multiply(y)]
    return sp.hstack(parts, format="csr")


def cosine_rows(x: sp.csr_matrix, y: sp.csr_matrix) -> np.ndarray:
    """(n,) cosine of matching rows of two L2-normalised matrices."""
    return np.asarray(x.multiply(y).sum(axis=1)).ravel()


def _jaccard(x: set, y: set) -> float:
    return len(x & y) / len(x | y) if x | y else 1.0


def _ngrams(tokens: list[str], n: int) -> set:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


PAIR_FEATURE_NAMES = (
    "len_a", "len_b", "len_diff", "len_ratio", "tok_diff", "tok_ratio", "jaccard_1", "jaccard_2", "jaccard_3",
    "overlap_a", "overlap_b", "num_mismatch", "num_jaccard", "cap_mismatch", "cap_jaccard", "seq_ratio",
    "same_first", "same_last",
)


def pair_row(a: str, b: str) -> list[float]:
    """Surface features of one pair; case is kept for named-token features, dropped elsewhere."""
    ta, tb = WORD.findall(a.lower()), WORD.findall(b.lower())
    sa, sb = set(ta), set(tb)
    na, nb = set(NUMBER.findall(a)), set(NUMBER.findall(b))
    ca, cb = set(CAPITAL.findall(a)[1:]), set(CAPITAL.findall(b)[1:])  # skip the sentence-initial word
    la, lb = len(a), len(b)
    return [
        la, lb, abs(la - lb), min(la, lb) / max(la, lb, 1), abs(len(ta) - len(tb)),
        min(len(ta), len(tb)) / max(len(ta), len(tb), 1),
        _jaccard(sa, sb), _jaccard(_ngrams(ta, 2), _ngrams(tb, 2)), _jaccard(_ngrams(ta, 3), _ngrams(tb, 3)),
        len(sa & sb) / max(len(sa), 1), len(sa & sb) / max(len(sb), 1),
        len(na ^ nb), _jaccard(na, nb), len(ca ^ cb), _jaccard(ca, cb),
        difflib.SequenceMatcher(None, ta[:SEQ_MAX_TOKENS], tb[:SEQ_MAX_TOKENS], autojunk=False).ratio(),
        float(ta[:1] == tb[:1]), float(ta[-1:] == tb[-1:]),
    ]


def cosines_of(va: list[sp.csr_matrix], vb: list[sp.csr_matrix]) -> np.ndarray:
    """(n, n_analyzers) float32 cosine similarity of each pair under each fitted TF-IDF analyzer,
    from each side's matrices (sides)."""
    return np.stack([cosine_rows(x, y) for x, y in zip(va, vb)], axis=1).astype(np.float32)
