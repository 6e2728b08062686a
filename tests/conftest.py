"""Shared fixtures: a tiny experiment on disk (data + config) inside tmp_path, and a stage runner."""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline import cli  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs with real backbones or real data (run with -m slow)")
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; run with -m cuda)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


WORDS = ["stock", "market", "price", "rose", "fell", "company", "shares", "bank", "rate", "profit",
         "city", "council", "vote", "plan", "court", "ruling", "team", "game", "win", "loss"]


def tiny_pairs(n: int, seed: int = 0, labelled: bool = True) -> pd.DataFrame:
    """Pairs whose label is learnable: 1 when b repeats most of a's words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = [rng.choice(WORDS) for _ in range(6)]
        label = i % 2
        b = a[:5] + [rng.choice(WORDS)] if label else [rng.choice(WORDS) for _ in range(6)]
        rng.shuffle(b)
        rows.append({"id": f"r{i}", "text_a": " ".join(a).capitalize(), "text_b": " ".join(b), "label": label})
    df = pd.DataFrame(rows)
    return df if labelled else df.drop(columns=["label"])


def tiny_roberta(d: Path, raw: Path, corpus: list[str], vocab_size: int = 400, **config) -> Path:
    """A 2-layer, 32-wide random RobertaModel saved in `d` with a byte-level BPE trained on `corpus`
    (its vocab and merges written to `raw`); `config`: more RobertaConfig keys. Seeded: the same
    call gives the same weights. No MLM head."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(raw))
    tok = RobertaTokenizer(vocab=str(raw / "vocab.json"), merges=str(raw / "merges.txt"))
    tok.save_pretrained(d)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        RobertaModel(cfg).save_pretrained(d)
    return d


def tiny_bert(d: Path, vocab: list[str]) -> Path:
    """A 1-layer, 32-wide random BERT (weights from seed 0) with a WordPiece vocabulary of `vocab`, in `d`."""
    from transformers import BertConfig, BertModel, BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(specials + vocab)})
    return save_tiny(d, tok, BertModel, BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   max_position_embeddings=64))


def save_tiny(d: Path, tokenizer, model_cls, config) -> Path:
    """`tokenizer` and a random `model_cls(config)` (weights from seed 0, the process's RNG left
    alone) saved in `d`."""
    import torch

    tokenizer.save_pretrained(d)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model_cls(config).save_pretrained(d)
    return d


def base_config(tmp: Path, **extra) -> dict:
    cfg = {
        "experiment": "tiny", "seed": 7, "metric": "accuracy",
        "data": {"dir": str(tmp / "in"), "train": "train.csv", "test": "test.csv", "id": "id",
                 "text_a": "text_a", "text_b": "text_b", "label": "label"},
        "folds": {"n_splits": 3, "strategy": "stratified", "seed": 1},
        "preprocess": {"lemmatizer": "lemminflect"},
        "models": [{"name": "lr", "kind": "tfidf_lr", "view": "lower", "params": {"min_df": 1}},
                   {"name": "plgbm", "kind": "pair_lgbm", "view": "raw",
                    "params": {"n_estimators": 20, "n_jobs": 1}}],
        "ensemble": {"methods": ["stack", "blend", "vote"], "submit": "stack"},
        "paths": {"work": str(tmp / "work"), "models": str(tmp / "models"),
                  "submissions": str(tmp / "subs"), "reports": str(tmp / "reports")},
    }
    for key, value in extra.items():
        cfg[key] = value
    return cfg


def lock_holder(config: Path):
    """A child process holding the experiment lock of `config` (it has printed 'held' when this
    returns); kill it to release the lock."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1])\n"
        "from pipeline.config import load_config\nfrom pipeline import layout\n"
        "with layout.experiment_lock(load_config(sys.argv[2])):\n"
        "    print('held', flush=True); time.sleep(60)"), str(ROOT), str(config)],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def stage_main(stage: str):
    """The `main` of stage script pipeline.<stage>, to run it in-process through cli.run as
    `python -m pipeline.<stage>` would (a stage script is run, never imported for its code)."""
    import importlib

    return importlib.import_module(f"pipeline.{stage}").main


@dataclass
class Exp:
    tmp: Path
    config: Path

    def run(self, stage: str, *args: str) -> int:
        """Run a stage in-process like its script would; returns the exit code."""
        main = stage_main(stage)
        try:
            cli.run(main, [str(self.config), *args])
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    def write_config(self, cfg: dict) -> None:
        self.config.write_text(yaml.safe_dump(cfg), encoding="utf-8")

    @property
    def models(self) -> Path:
        return self.tmp / "models" / "tiny"


@pytest.fixture
def exp(tmp_path: Path) -> Exp:
    (tmp_path / "in").mkdir()
    tiny_pairs(90, 0).to_csv(tmp_path / "in" / "train.csv", index=False)
    tiny_pairs(30, 1, labelled=False).to_csv(tmp_path / "in" / "test.csv", index=False)
    e = Exp(tmp_path, tmp_path / "tiny.yaml")
    e.write_config(base_config(tmp_path))
    return e


@pytest.fixture
def prepared(exp: Exp) -> Exp:
    assert exp.run("preprocess") == 0
    assert exp.run("folds") == 0
    return exp
