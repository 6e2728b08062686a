"""Inputs and settings have bounds: past one, a single `error:` line naming the file (row, line or
key) and the bound, at read or config time, in bounded time and memory; never a traceback from
training, a float32 overflow or a huge allocation. Byte bounds are overridden by their environment
variables here, so the tests stay small."""
from __future__ import annotations

import pytest

from conftest import base_config, tiny_pairs
from pipeline.config import AugmentConfig
from pipeline.errors import PipelineError


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(PipelineError) as e:
        fn(*args, **kw)
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    return str(e.value)


def refused(exp, capsys, *args: str) -> str:
    """Run preprocess, which must refuse; its one `error:` line, with nothing written."""
    capsys.readouterr()
    assert exp.run("preprocess", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (exp.tmp / "work" / "tiny" / "prepared").exists()
    return err[0]


def train_labels(exp, labels: list[str], **cfg) -> None:
    """The experiment's train file with these labels (one per row), and config keys on top."""
    df = tiny_pairs(len(labels), 0)
    df["label"] = labels
    df.to_csv(exp.tmp / "in" / "train.csv", index=False)
    config = base_config(exp.tmp, **cfg)
    config["models"] = config["models"][:1]
    exp.write_config(config)


# ----------------------------------------------------------------------------- augmentation copies


def test_augment_copies_bound():
    assert AugmentConfig(copies=20, random_swap=0.1).copies == 20
    with pytest.raises(PipelineError, match="copies=100000 must be between 0 and 20"):
        AugmentConfig(copies=100_000, random_swap=0.1)


def test_augment_copies_bound_at_config_time(exp, capsys):
    line = refused(exp, capsys, "models.lr.augment.copies=100000", "models.lr.augment.random_swap=0.1")
    assert "augment.copies=100000 must be between 0 and 20" in line