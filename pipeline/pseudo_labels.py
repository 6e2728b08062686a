"""The pseudo labels of each round: the pseudo_label stage's artifact, its writer and checked reader.

    <paths.work>/<exp>/pseudo/r<N>.csv    one row per pseudo label (CSV_COLUMNS, plus p_<class>
                                          columns for soft labels), with its provenance
    <paths.work>/<exp>/pseudo/r<N>.json   rules, teachers, counts per fold and class, the csv's sha256
                                          (written last: the commit marker of a round's labels)
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from .artifacts import config_diff
from .config import ExperimentConfig, config_source, to_dict
from .errors import PipelineError
from .fileio import committed, read_json, sha256_file
from .layout import round_paths, save_resolved

CSV_COLUMNS = ["round", "fold", "test_row", "test_id", "label", "votes", "n_teachers", "voters", "confidence"]


# What decides which rows a round labels and how: a round made under other values is another round.
LABEL_SETTINGS = ("min_votes", "min_confidence", "max_fraction", "keep_class_balance", "tolerance", "models", "soft")


def label_settings(cfg: ExperimentConfig) -> dict:
    """The pseudo settings that shape a round's labels, as its record keeps them."""
    return {k: v for k, v in to_dict(cfg.pseudo).items() if k in LABEL_SETTINGS}


def check_round(cfg: ExperimentConfig, round_: int) -> dict:
    """Round `round_`'s record, refused when the round was not made or was made under other
    pseudo settings than the config's (so its students are not what the config describes)."""
    json_path = round_paths(cfg, round_)[1]
    if not json_path.is_file():
        raise PipelineError(f"pseudo-label round {round_} was not made ({json_path} not found): run "
                            f"`python -m pipeline.pseudo_label {config_source(cfg)}` first")
    record = read_json(json_path)
    made = record.get("settings") if isinstance(record, dict) else None
    if made is not None and made != label_settings(cfg):
        changed = ", ".join(config_diff(made, label_settings(cfg), "pseudo."))
        raise PipelineError(f"{json_path} was made under other pseudo-label settings than the config ({changed}): "
                            f"run `python -m pipeline.pseudo_label {config_source(cfg)}` again")
    return record


def write_round(cfg: ExperimentConfig, round_: int, frame: pd.DataFrame, info: dict) -> dict:
    """The csv first, then the json holding its sha256 and the settings it was made under (the
    json is the commit marker)."""
    csv_path, json_path = round_paths(cfg, round_)
    with committed() as c:  # the labels, their record and config.yaml land together or not at all
        c.write_csv(csv_path, frame)
        save_resolved(cfg, csv_path.parent, c)
        info = {**info, "csv": csv_path.name, "csv_sha256": c.sha256(csv_path), "n_rows": len(frame),
                "settings": label_settings(cfg)}
        c.write_json(json_path, info)
    return info


def load_round(cfg: ExperimentConfig, round_: int) -> tuple[pd.DataFrame, dict]:
    """A round's pseudo labels and their record, refused when the csv does not match its json."""
    csv_path, json_path = round_paths(cfg, round_)
    info = read_json(json_path)
    if not csv_path.is_file() or sha256_file(csv_path) != info.get("csv_sha256"):
        raise PipelineError(f"{csv_path} does not match its sha256 in {json_path}: run the pseudo_label stage again")
    frame = pd.read_csv(csv_path, dtype={"test_id": str, "label": str, "voters": str}, keep_default_na=False)
    return frame, info


def pseudo_labels_sha256(cfg: ExperimentConfig, round_: int) -> Optional[str]:
    """The sha256 of round `round_`'s pseudo-label csv as its record states it (None for round 0
    or a round whose labels are gone)."""
    if round_ == 0:
        return None
    json_path = round_paths(cfg, round_)[1]
    record = read_json(json_path) if json_path.is_file() else {}
    return record.get("csv_sha256") if isinstance(record, dict) else None
