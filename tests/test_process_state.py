"""Process-wide state: every stage leaves it as it found it, so a stage (or a test) run after another
sees the same process as one run alone.

The state: torch's thread count and global RNG, numpy's and python's global RNGs, csv's field size
limit and matplotlib's backend. Before each run it is set to values no stage would choose (a
thread count, field limit and backend of a "user"), so a stage that sets its own cannot go unseen.
"""
from __future__ import annotations

import csv
import random

import matplotlib
import numpy as np
import pytest
import sklearn.linear_model  # noqa: F401  (see below)
import torch
import yaml

from conftest import WORDS

# Importing scikit-learn's estimators the first time in a process imports `rich`, which draws 24 bits
# from python's global RNG at import time (sklearn 1.9: sklearn.callback -> rich.style). That is a
# library's one-off import, not a stage's state; importing it here, at collection, keeps the checks
# below from depending on which test ran first.

USER_CSV_LIMIT = 54_321  # neither python's default nor anything the pipeline would set
USER_BACKEND = "svg"     # non-interactive, always available, and not the report's Agg


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, keys.tobytes(), pos, has_gauss, gauss


STATE = {
    "torch.get_num_threads()": torch.get_num_threads,
    "torch.random.get_rng_state()": lambda: torch.random.get_rng_state().numpy().tobytes(),
    "np.random.get_state()": _numpy_state,
    "random.getstate()": random.getstate,
    "csv.field_size_limit()": csv.field_size_limit,
    "matplotlib.get_backend()": matplotlib.get_backend,
}


def process_state() -> dict:
    return {name: read() for name, read in STATE.items()}


def changed(before: dict, after: dict) -> list[str]:
    return [name for name in STATE if before[name] != after[name]]


@pytest.fixture
def user_state():
    """A process state set the way a user might have it; the original is put back afterwards."""
    threads, limit, backend = torch.get_num_threads(), csv.field_size_limit(), matplotlib.get_backend()
    rngs = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    csv.field_size_limit(USER_CSV_LIMIT)
    matplotlib.use(USER_BACKEND)
    yield
    torch.set_num_threads(threads)
    csv.field_size_limit(limit)
    matplotlib.use(backend)
    torch.random.set_rng_state(rngs[0])
    np.random.set_state(rngs[1])
    random.setstate(rngs[2])


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A 1-layer, 32-wide random BERT over conftest's words, saved without a pooler (as sentence
    encoders often are), so loading it initialises missing weights from torch's global RNG."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("encoder")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(specials + sorted(set(WORDS)))})
    tok.save_pretrained(d)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config, add_pooling_layer=False).save_pretrained(d)
    return d


def with_torch_models(exp, encoder_dir) -> None:
    """The tiny experiment plus a transformer (its own thread count, dropout) and embed_lr on an in-task
    pretrained copy of the encoder, with one pseudo-label round, so every stage of run_all.sh has work to do."""
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"] += [
        {"name": "bert", "kind": "transformer", "view": "lower",
         "params": {"backbone": str(encoder_dir), "max_length": 32, "epochs": 1, "batch_size": 16,
                    "precision": "fp32", "dropout": 0.1, "num_threads": torch.get_num_threads() + 1}},
        {"name": "emb", "kind": "embed_lr", "view": "lower", "params": {"backbone": "pretrained:mlm", "max_length": 32}},
    ]
    cfg["pretrain"] = {"backbone": str(encoder_dir), "max_steps": 2, "batch_size": 8, "max_length": 32,
                       "num_threads": torch.get_num_threads() + 1}
    cfg["pseudo"] = {"enabled": True, "rounds": 1, "min_confidence": 0.5, "retrain": ["lr", "bert"]}
    exp.write_config(cfg)


def test_every_stage_leaves_the_process_state_alone(exp, encoder_dir, user_state):
    with_torch_models(exp, encoder_dir)
    leaks = []
    for stage in ("preprocess", "folds", "pretrain", "train", "pseudo_label", "ensemble", "report"):
        before = process_state()
        assert exp.run(stage) == 0, stage
        leaks += [f"{stage}: {name}" for name in changed(before, process_state())]
    assert (exp.models / "bert" / "oof.npy").is_file() and (exp.models / "emb" / "oof.npy").is_file()
    assert (exp.tmp / "reports" / "tiny" / "report.md").is_file()
    assert not leaks, "changed by a stage: " + "; ".join(leaks)


def test_transformer_fit_and_predict_restore_threads_and_rng(encoder_dir, user_state):
    from pipeline.models.params import TransformerParams
    from pipeline.models.transformer import TransformerModel
    from test_transformer import context, folds, make_table

    train, valid = folds(make_table("t", pair=True))
    p = TransformerParams(backbone=str(encoder_dir), max_length=32, epochs=1, batch_size=8, precision="fp32",
                          dropout=0.1, num_threads=torch.get_num_threads() + 1)
    before = process_state()
    model = TransformerModel(p, 2, "lower").fit(train, valid, context(seed=3))
    assert changed(before, process_state()) == [], "fit"
    model.predict_proba(valid)
    assert changed(before, process_state()) == [], "predict_proba"


def test_embeddings_restore_the_rng(encoder_dir, user_state):
    from pipeline.models.encoder import load_encoder, split_embeddings
    from test_transformer import folds, make_table

    before = process_state()
    load_encoder({}, str(encoder_dir))
    split_embeddings({}, str(encoder_dir), folds(make_table("t", pair=True))[1], "raw", 32)
    assert changed(before, process_state()) == []
