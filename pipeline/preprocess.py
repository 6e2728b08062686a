"""Preprocess stage: read the raw files once, write every text view plus labels and ids.

    python -m pipeline.preprocess [config.yaml] [key=value ...]

Views: raw; lower (word-segmented where the text is Chinese, lowercased, whitespace collapsed);
lemma (lower, then lemmatised).
Outputs under data/<exp>/prepared/: train.jsonl, test.jsonl, meta.json, config.yaml.
"""
from __future__ import annotations

import json
import logging
from typing import Callable, Optional

from . import cli
from .config import ExperimentConfig
from .data import VIEWS, RawTable, Table, label_to_json, read_raw
from .errors import PipelineError
from .io import committed
from .store import data_dir, prepared_dir, source_fingerprint
from .tasks import Task, get as get_task
from .views import as_is, han_share, make_lemmatizer, make_segmenter, table_views  # noqa: F401 (han_share: tests)

log = logging.getLogger("pipeline.preprocess")


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
