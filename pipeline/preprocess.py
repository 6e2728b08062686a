"""Preprocess stage: read the raw files once, write every text view plus labels and ids.

    python -m pipeline.preprocess [config.yaml] [key=value ...]

Views: raw; lower (word-segmented where the text is Chinese, lowercased, whitespace collapsed);
lemma (lower, then lemmatised).
Outputs under data/<exp>/prepared/: train.jsonl, test.jsonl, meta.json, config.yaml.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from typing import Callable, Optional


from . import cli
from .config import ExperimentConfig
from .data import VIEWS, RawTable, Table, label_to_json, read_raw
from .errors import PipelineError
from .io import committed
from .store import data_dir, prepared_dir, source_fingerprint
from .tasks import Task, get as get_task

log = logging.getLogger("pipeline.preprocess")
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


def prepare(raw: RawTable, lemma: Callable[[str], str], classes: list[str], path: str, task: Task,
            label_key, segment: Callable[[str], str] = as_is) -> Table:
    a, b = views_of(raw.text_a, lemma, segment), views_of(raw.text_b, lemma, segment)
    y = task.encode(raw.labels, classes, path, label_key) if raw.labels is not None else None
    return Table(raw.name, raw.ids, {v: (a[v], b[v]) for v in VIEWS}, y, raw.groups)


def table_to_jsonl(table: Table) -> str:
    lines = []
    for i, id_ in enumerate(table.ids):
        row = {"id": id_, "y": None if table.y is None else label_to_json(table.y[i])}
        if table.groups is not None:
            row["group"] = table.groups[i]
        for v in VIEWS:
            a, b = table.views[v]
            row[v] = [a[i]] if b is None else [a[i], b[i]]
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def run_preprocess(cfg: ExperimentConfig) -> dict:
    base = data_dir(cfg)
    group_col = cfg.folds.group_column if cfg.folds.strategy == "group" else None
    raw_train = read_raw(cfg.data, "train", base, group_col)
    raw_test = read_raw(cfg.data, "test", base)
    if (raw_train.text_b is None) != (raw_test.text_b is None):
        raise PipelineError("train and test disagree on text_b")
    task = get_task(cfg.task)
    classes = task.columns(raw_train.labels, cfg.data.label, str(base / cfg.data.train))
    lem_name, lemma = make_lemmatizer(cfg.preprocess.lemmatizer)
    seg_name, segment = make_segmenter(cfg.preprocess.segmenter, raw_train.text_a + (raw_train.text_b or []))
    log.info("lemmatiser: %s, segmenter: %s", lem_name, seg_name)
    train = prepare(raw_train, lemma, classes, str(base / cfg.data.train), task, cfg.data.label, segment)
    task.check_labels(train.y, cfg.metric, str(base / cfg.data.train))
    test = prepare(raw_test, lemma, classes, str(base / cfg.data.test), task, cfg.data.test_label, segment)
    out = prepared_dir(cfg)
    if raw_train.n_empty or raw_test.n_empty:
        log.warning("empty texts treated as '': train %d, test %d", raw_train.n_empty, raw_test.n_empty)
    with committed() as c:  # the tables, their record and config.yaml land together or not at all
        c.write_text(out / "train.jsonl", table_to_jsonl(train))
        c.write_text(out / "test.jsonl", table_to_jsonl(test))
        cli.save_resolved(cfg, out, c)
        meta = {"classes": classes, "task": task.name, "columns": task.outputs,
                "lemmatizer": lem_name, "segmenter": seg_name, "is_pair": train.is_pair,
            "n_train": len(train), "n_test": len(test), "has_test_labels": test.y is not None,
                "n_empty_texts": {"train": raw_train.n_empty, "test": raw_test.n_empty},
                "test_ids": {"source": raw_test.id_source, "column": raw_test.id_column},
                "train_sha256": c.sha256(out / "train.jsonl"), "test_sha256": c.sha256(out / "test.jsonl"),
                **source_fingerprint(cfg)}
        c.write_json(out / "meta.json", meta)
    return meta


def main(argv: Optional[list[str]] = None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg = cli.load(args)
    meta = run_preprocess(cfg)
    print(f"preprocess: {meta['n_train']} train, {meta['n_test']} test rows, task {meta['task']}, "
          f"{len(meta['classes'])} output columns ({meta['columns']}) {meta['classes']}, "
          f"lemmatiser {meta['lemmatizer']}, segmenter {meta['segmenter']} -> {prepared_dir(cfg)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
