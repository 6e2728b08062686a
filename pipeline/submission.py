"""The submission CSVs: the ensemble stage's files for the competition, one per method and the
submitted one, in the columns, column order and id order the competition expects.

    <paths.submissions>/<exp>.csv            the submitted method (ensemble.submit)
    <paths.submissions>/<exp>_<method>.csv   every method
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import ExperimentConfig
from .errors import PipelineError
from .layout import input_files
from .readers import read_table
from .tasks import get as get_task


def submission_columns(cfg: ExperimentConfig, meta: dict) -> tuple[str, str]:
    """(id column, label column) of the submission: the names the files use, "id" / "label" where
    the files have no names (row numbers, columns given by position)."""
    id_col = (meta.get("test_ids") or {}).get("column")
    if id_col is None:
        key = cfg.data.test_id if cfg.data.test_id is not None else cfg.data.id
        id_col = key if isinstance(key, str) else "id"
    return id_col, cfg.data.label if isinstance(cfg.data.label, str) else "label"


def submission_frame(cfg: ExperimentConfig, meta: dict, test_ids: list[str], r: dict,
                     classes: list[str]) -> pd.DataFrame:
    """One row per test row in test order: the id column, then the task's label columns (the
    original class name, the predicted value, or one 0/1 column per label; with
    ensemble.submit_values=probabilities the method's test matrix, one column per output)."""
    id_col, label_col = submission_columns(cfg, meta)
    task = get_task(cfg.task)
    values = (task.probability_columns(r["test"], classes, label_col) if cfg.ensemble.submit_values == "probabilities"
              else task.submission(task.decide(r["test"], r["threshold"]), classes, label_col))
    df = pd.DataFrame({id_col: test_ids, **values})
    if len(df) != len(test_ids) or df[id_col].duplicated().any() or df.isna().any().any():
        raise PipelineError("submission check failed: ids must be unique and every row labelled")
    return df if cfg.data.sample_submission is None else like_sample(df, id_col, input_files(cfg)["data.sample_submission"],
                                                                     cfg.data.encoding)


def like_sample(df: pd.DataFrame, id_col: str, path: Path, encoding: str) -> pd.DataFrame:
    """`df` with exactly the columns, column order and id order of the sample submission at `path`
    (the Kaggle convention). The sample's id column is `id_col` if it has one, else its first
    column; a single prediction column takes the sample's name for it. Ids that are only in the
    sample or only in the test file, or prediction columns the sample names that the submission
    lacks, are one PipelineError."""
    sample = read_table(path, "auto", encoding=encoding)
    sample_id = id_col if id_col in sample.columns else sample.columns[0]
    ours, theirs = [c for c in df.columns if c != id_col], [c for c in sample.columns if c != sample_id]
    if len(ours) == 1 and len(theirs) == 1:
        df = df.rename(columns={ours[0]: theirs[0]})
    elif set(theirs) != set(ours):
        raise PipelineError(f"{path}: its prediction columns {theirs} are not the submission's {ours} "
                            "(data.label names them)")
    ids = [("" if v is None else str(v)).strip() for v in sample[sample_id]]
    only_sample, only_test = sorted(set(ids) - set(df[id_col])), sorted(set(df[id_col]) - set(ids))
    if only_sample or only_test or len(ids) != len(set(ids)):
        raise PipelineError(f"{path}: its ids ({sample_id!r}) differ from the test file's: "
                            f"{len(only_sample)} only in the sample {_some(only_sample)}, "
                            f"{len(only_test)} only in the test file {_some(only_test)}"
                            + (", and some are repeated" if len(ids) != len(set(ids)) else ""))
    out = df.rename(columns={id_col: sample_id}).set_index(sample_id).loc[ids].reset_index()
    return out[list(sample.columns)]


def _some(values: list[str], k: int = 3) -> str:
    return "(" + ", ".join(repr(v) for v in values[:k]) + (", ..." if len(values) > k else "") + ")" if values else ""
