"""The prepared tables: the preprocess stage's artifact, its writer and its checked reader.

    <paths.work>/<exp>/prepared/train.jsonl, test.jsonl   one row per input row: id, y, every view
    <paths.work>/<exp>/prepared/meta.json                 classes, task, lemmatiser, segmenter, counts,
                                                          the files' sha256 and what they were made from
    <paths.work>/<exp>/prepared/config.yaml

Views: raw; lower (word-segmented where the text is Chinese, lowercased, whitespace collapsed);
lemma (lower, then lemmatised).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from .config import ExperimentConfig, config_hash, to_dict
from .data import VIEWS, RawTable, Table, label_to_json, labels_from_json, read_raw
from .errors import PipelineError
from .fileio import committed, read_json, sha256_file
from .layout import data_dir, prepared_dir, save_resolved
from .tasks import Task, get as get_task
from .views import as_is, make_lemmatizer, make_segmenter, table_views

log = logging.getLogger("pipeline.preprocess")
META = "meta.json"


def prepare(raw: RawTable, lemma: Callable[[str], str], classes: list[str], path: str, task: Task,
            label_key, segment: Callable[[str], str] = as_is) -> Table:
    """The raw table's every view (views.table_views: what augmentation and serving call too)."""
    y = task.encode(raw.labels, classes, path, label_key) if raw.labels is not None else None
    return Table(raw.name, raw.ids, table_views(raw.text_a, raw.text_b, lemma, segment), y, raw.groups)


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


def write_prepared(cfg: ExperimentConfig) -> dict:
    """Read the raw files once and write every view, labels and ids with their record; returns it."""
    base = data_dir(cfg)
    group_col = cfg.folds.group_column if cfg.folds.strategy == "group" else None
    raw_train = read_raw(cfg.data, "train", base, group_col)
    raw_test = read_raw(cfg.data, "test", base)
    if (raw_train.text_b is None) != (raw_test.text_b is None):
        raise PipelineError("train and test disagree on text_b")
    warn_shared_rows(raw_train, raw_test)
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
        save_resolved(cfg, out, c)
        meta = {"classes": classes, "task": task.name, "columns": task.outputs,
                "lemmatizer": lem_name, "segmenter": seg_name, "is_pair": train.is_pair,
            "n_train": len(train), "n_test": len(test), "has_test_labels": test.y is not None,
                "n_empty_texts": {"train": raw_train.n_empty, "test": raw_test.n_empty},
                "test_ids": {"source": raw_test.id_source, "column": raw_test.id_column},
                "train_sha256": c.sha256(out / "train.jsonl"), "test_sha256": c.sha256(out / "test.jsonl"),
                **source_fingerprint(cfg)}
        c.write_json(out / META, meta)
    return meta


def shared_rows(train: RawTable, test: RawTable) -> int:
    """How many test rows have the texts of some train row (text_a, and text_b for pairs)."""
    seen = set(zip(train.text_a, train.text_b or [None] * len(train.text_a)))
    return sum((a, b) in seen for a, b in zip(test.text_a, test.text_b or [None] * len(test.text_a)))


def warn_shared_rows(train: RawTable, test: RawTable) -> int:
    """A warning when test rows repeat train rows: the test file may be the train file, or overlap
    it (its predictions then say little about unseen rows). Returns the count."""
    n = shared_rows(train, test)
    if n:
        log.warning("%d of %d test rows have the same texts as a train row%s", n, len(test.text_a),
                    " (is data.test the train file?)" if n == len(test.text_a) else "")
    return n


def table_from_jsonl(name: str, path: Path) -> Table:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    pair = len(rows[0]["raw"]) == 2
    views = {v: ([r[v][0] for r in rows], [r[v][1] for r in rows] if pair else None) for v in VIEWS}
    y = None if rows[0]["y"] is None else labels_from_json([r["y"] for r in rows])
    groups = [r["group"] for r in rows] if "group" in rows[0] else None
    return Table(name, [r["id"] for r in rows], views, y, groups)


def source_fingerprint(cfg: ExperimentConfig) -> dict:
    """What the prepared files were made from: input files' hashes and the settings that matter."""
    base = data_dir(cfg)
    settings = {"task": cfg.task, "data": to_dict(cfg.data), "preprocess": to_dict(cfg.preprocess),
                "group_column": cfg.folds.group_column if cfg.folds.strategy == "group" else None}
    return {"train_file_sha256": sha256_file(_existing(base / cfg.data.train)),
            "test_file_sha256": sha256_file(_existing(base / cfg.data.test)),
            "settings_sha256": config_hash(settings)}


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise PipelineError(f"file not found: {path}")
    return path


def load_prepared(cfg: ExperimentConfig) -> tuple[Table, Table, dict]:
    """The prepared tables, refused if stale (inputs or settings changed) or tampered with."""
    d = prepared_dir(cfg)
    meta_path = d / META
    if not meta_path.is_file():
        raise PipelineError(f"{meta_path} not found: run `python -m pipeline.preprocess` first")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
        raise PipelineError(f"{meta_path} is not a preprocess record: run `python -m pipeline.preprocess` again")
    now = source_fingerprint(cfg)
    for key, what in (("train_file_sha256", cfg.data.train), ("test_file_sha256", cfg.data.test),
                      ("settings_sha256", "the data/preprocess settings")):
        if meta.get(key) != now[key]:
            raise PipelineError(f"{meta_path} was made from another {what} than the current one: "
                                "run `python -m pipeline.preprocess` again")
    for name in ("train", "test"):
        if sha256_file(_existing(d / f"{name}.jsonl")) != meta.get(f"{name}_sha256"):
            raise PipelineError(f"{d / (name + '.jsonl')} does not match the hash in {meta_path}")
    train, test = table_from_jsonl("train", d / "train.jsonl"), table_from_jsonl("test", d / "test.jsonl")
    train.segmented = test.segmented = meta.get("segmenter", "none") != "none"
    return train, test, meta
