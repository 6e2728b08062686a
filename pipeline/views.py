"""Text views, in one place: what the preprocess stage writes for the train and test files, what
the driver builds for augmented training rows (pipeline/augment.py) and what the serving process
builds for a request's texts, so all see identical strings.

Views: raw (as read); lower (word-segmented where the text is Chinese, whitespace collapsed,
lowercased); lemma (lower, split into word and punctuation tokens, lemmatised).
"""
from __future__ import annotations

import functools
import logging
import re
from typing import Callable, Optional

from .data import VIEWS, Table
from .errors import PipelineError

TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
SPACE = re.compile(r"\s+")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")   # CJK ideographs: text written without spaces


def normalise(text: str) -> str:
    return SPACE.sub(" ", text).strip().lower()


def wordnet_available() -> bool:
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        return True
    except (ImportError, LookupError):
        return False


def make_lemmatizer(choice: str) -> tuple[str, Callable[[str], str]]:
    """Return (name, word -> lemma); `auto` prefers WordNet, else lemminflect (offline data)."""
    if choice == "auto":
        choice = "wordnet" if wordnet_available() else "lemminflect"
    if choice == "none":
        return "none", lambda w: w
    if choice == "wordnet":
        if not wordnet_available():
            raise PipelineError("preprocess.lemmatizer=wordnet but nltk's WordNet corpus is not installed "
                                "(use lemminflect or auto)")
        from nltk.stem import WordNetLemmatizer

        lem = WordNetLemmatizer()
        return "wordnet", functools.lru_cache(maxsize=None)(lambda w: lem.lemmatize(lem.lemmatize(w), "v"))
    import lemminflect

    # Nouns first, then verbs, as WordNet's default does; lemminflect needs a POS guess.
    def lemma(word: str) -> str:
        options = lemminflect.getAllLemmas(word)
        for pos in ("NOUN", "VERB", "ADJ", "ADV"):
            if pos in options:
                return options[pos][0]
        return word

    return "lemminflect", functools.lru_cache(maxsize=None)(lemma)


def as_is(text: str) -> str:
    """The segmenter `none`: text with spaces between its words already."""
    return text


def han_share(texts: list[str]) -> float:
    """Share of CJK ideographs among the non-space characters of `texts`."""
    chars = sum(len(t) - t.count(" ") for t in texts)
    return sum(len(HAN.findall(t)) for t in texts) / max(chars, 1)


def make_segmenter(choice: str, texts: list[str]) -> tuple[str, Callable[[str], str]]:
    """Return (name, text -> words separated by spaces). `auto`: jieba when most characters of
    `texts` are CJK ideographs (Chinese is written without spaces, so word n-grams and the
    lower/lemma views would otherwise see a sentence as one word), else none."""
    if choice == "auto":
        choice = "jieba" if han_share(texts) > 0.5 else "none"
    if choice == "none":
        return "none", as_is
    import jieba  # ships its dictionary: works offline

    logging.getLogger("jieba").setLevel(logging.WARNING)  # its "building prefix dict" lines are noise
    tokenizer = jieba.Tokenizer()  # an instance of our own: the module's default one is shared state
    return "jieba", lambda t: " ".join(w for w in tokenizer.lcut(t) if w.strip())


def lemmatise(text: str, lemma: Callable[[str], str]) -> str:
    return " ".join(lemma(t) for t in TOKEN.findall(normalise(text)))


def views_of(texts: Optional[list[str]], lemma: Callable[[str], str],
             segment: Callable[[str], str] = as_is) -> dict[str, Optional[list[str]]]:
    """raw as read; lower and lemma of the segmented text (words separated by spaces)."""
    if texts is None:
        return {v: None for v in VIEWS}
    words = [segment(t) for t in texts]
    return {"raw": texts, "lower": [normalise(t) for t in words], "lemma": [lemmatise(t, lemma) for t in words]}


Views = Callable[[list[str], Optional[list[str]]], dict]  # (text_a, text_b or None) -> table_views


def table_views(text_a: list[str], text_b: Optional[list[str]], lemma: Callable[[str], str],
                segment: Callable[[str], str] = as_is) -> dict[str, tuple[list[str], Optional[list[str]]]]:
    """Table.views of n rows: {view: (text_a views (n,), text_b views (n,) or None)}."""
    a, b = views_of(text_a, lemma, segment), views_of(text_b, lemma, segment)
    return {v: (a[v], b[v]) for v in VIEWS}


def make_views(lemmatizer: str, segmenter: str, texts: list[str]) -> tuple[str, str, Views]:
    """(lemmatiser name, segmenter name, table_views with them) for the configured (or recorded)
    choices; `texts` only decide the segmenter `auto`."""
    lem_name, lemma = make_lemmatizer(lemmatizer)
    seg_name, segment = make_segmenter(segmenter, texts)
    return lem_name, seg_name, lambda a, b: table_views(a, b, lemma, segment)


def recorded_views(meta: dict) -> Views:
    """table_views with the lemmatiser and segmenter the preprocess stage ran (meta.json's
    `lemmatizer` and `segmenter`), for rows made after it (augmented rows, served requests)."""
    return make_views(meta.get("lemmatizer", "none"), meta.get("segmenter", "none"), [])[2]


def table_of(name: str, ids: list[str], text_a: list[str], text_b: Optional[list[str]],
             views: Views, y=None, groups=None, segmented: bool = False) -> Table:
    """A Table of every view of the texts (n strings each, text_b None for single texts)."""
    return Table(name, ids, views(text_a, text_b), y, groups, segmented)
