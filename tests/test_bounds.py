"""Inputs and settings have bounds: past one, a single `error:` line naming the file (row, line or
key) and the bound, at read or config time, in bounded time and memory; never a traceback from
training, a float32 overflow or a huge allocation. Byte bounds are overridden by their environment
variables here, so the tests stay small."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from conftest import base_config, tiny_pairs
from pipeline import metrics as M
from pipeline.config import AugmentConfig
from pipeline.data import class_order
from pipeline.errors import PipelineError
from pipeline.tasks import MAX_TARGET, TASKS


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


# ----------------------------------------------------------------------------- regression targets


def test_huge_regression_target_refused_at_preprocess(exp, capsys):
    labels = [str(i % 7) for i in range(60)]
    labels[41] = "1e307"  # finite as float64, overflows float32 in training
    train_labels(exp, labels, task="regression", metric="rmse")
    line = refused(exp, capsys)
    assert "train.csv row 42" in line and "'1e307'" in line and f"{MAX_TARGET:g}" in line


@pytest.mark.parametrize("value", ["1e31", "-2e30", "1e400", "-1e999"])
def test_target_beyond_the_bound(value):
    msg = one_line_error(TASKS["regression"].encode, ["1", value], ["y"], "t.csv", "y")
    assert "t.csv row 2" in msg and "bound" in msg


def test_target_at_the_bound_accepted():
    y = TASKS["regression"].encode(["1e30", "-1e30", "0"], ["y"], "t.csv", "y")
    assert y.tolist() == [1e30, -1e30, 0.0]
    assert TASKS["regression"].invalid_rows(np.array([1.0, 2e30, np.nan]), 1).tolist() == [1, 2]


# ----------------------------------------------------------------------------- qwk


def test_qwk_rating_range_refused_before_training(exp, capsys):
    train_labels(exp, [str(i * 11_111) for i in range(91)], task="regression", metric="qwk")  # 0..999,990
    line = refused(exp, capsys)
    assert "train.csv" in line and f"at most {M.QWK_MAX_RATINGS} ratings" in line and "0..999990" in line


def test_qwk_range_at_the_bound_passes():
    y = np.array([0.0, M.QWK_MAX_RATINGS - 1.0, 3.0])
    TASKS["regression"].check_labels(y, "qwk", "t.csv")
    with pytest.raises(PipelineError, match=f"at most {M.QWK_MAX_RATINGS} ratings"):
        TASKS["regression"].check_labels(np.r_[y, M.QWK_MAX_RATINGS], "qwk", "t.csv")


def confusion_qwk(a: np.ndarray, b: np.ndarray) -> float:
    """QWK from the full confusion matrix over every rating from the lowest to the highest."""
    lo, k = min(a.min(), b.min()), int(max(a.max(), b.max()) - min(a.min(), b.min()) + 1)
    conf = np.zeros((k, k))
    np.add.at(conf, (a - lo, b - lo), 1)
    expected = np.outer(conf.sum(1), conf.sum(0)) / conf.sum()
    w = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    return 1.0 if (w * expected).sum() == 0 else 1 - (w * conf).sum() / (w * expected).sum()


@pytest.mark.parametrize("seed", range(5))
def test_qwk_equals_the_confusion_matrix_formula(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(-3, 9, 50), rng.integers(0, 12, 50)  # ratings with gaps and unequal ranges
    assert np.isclose(M.qwk(a, b), confusion_qwk(a, b))
    assert M.qwk(a, a) == 1.0 and M.qwk(np.full(4, 2), np.full(4, 2)) == 1.0


def test_qwk_of_a_huge_rating_range_allocates_nothing_big():
    a = np.array([0, 1_000_000, 500_000, 3] * 1000)
    tracemalloc.start()
    value = M.qwk(a, a[::-1].copy())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.isfinite(value) and peak < 10 * a.nbytes  # the confusion matrix would be 8 TB
    assert "qwk" not in M.regression_scores(a.astype(float), a[:, None].astype(float))


# ----------------------------------------------------------------------------- augmentation copies


def test_augment_copies_bound():
    assert AugmentConfig(copies=20, random_swap=0.1).copies == 20
    with pytest.raises(PipelineError, match="copies=100000 must be between 0 and 20"):
        AugmentConfig(copies=100_000, random_swap=0.1)


def test_augment_copies_bound_at_config_time(exp, capsys):
    line = refused(exp, capsys, "models.lr.augment.copies=100000", "models.lr.augment.random_swap=0.1")
    assert "augment.copies=100000 must be between 0 and 20" in line


# ----------------------------------------------------------------------------- plain numbers


@pytest.mark.parametrize("value", ["1_000", "٣", "１", " 1", "0x10", "nan", "inf", "-inf", "1e", "--1", "1,5", "½"])
def test_regression_label_must_be_a_plain_ascii_number(value):
    msg = one_line_error(TASKS["regression"].encode, ["1", value], ["y"], "t.csv", "y")
    assert "t.csv row 2" in msg and repr(value) in msg


def test_plain_numbers_accepted():
    values = ["-1.5e3", ".5", "1.", "+2", "3E-2", "0"]
    assert TASKS["regression"].encode(values, ["y"], "t.csv", "y").tolist() == [-1500.0, 0.5, 1.0, 2.0, 0.03, 0.0]


def test_non_ascii_digit_labels_refused_through_the_file(exp, capsys):
    train_labels(exp, [str(i % 5) for i in range(59)] + ["٣"], task="regression", metric="rmse")
    line = refused(exp, capsys)
    assert "train.csv row 60: label '٣'" in line


def test_class_order_by_plain_integers_only():
    assert class_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_order(["٣", "3", "10"]) == sorted(["٣", "3", "10"])   # not numbers: by name
    assert class_order(["01", "1", "2"]) == ["01", "1", "2"]             # a tie sorts by name, every run