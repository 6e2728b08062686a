"""Frozen sentence-embedding features (embed_lr, pair_lgbm's embed cosine), on the tiny random BERT."""
from __future__ import annotations

import numpy as np

from pipeline.data import Split
from pipeline.models import encoder as sentence_encoder
from pipeline.models.classical import PairLGBM
from pipeline.models.embed import EmbedLR
from pipeline.models.encoder import load_encoder, split_embeddings
from pipeline.models.params import EmbedLRParams, PairLGBMParams
from test_transformer import bert_dir, context, folds, make_table  # noqa: F401  (bert_dir: fixture)


def test_embed_lr_fits_pairs_and_singles(bert_dir):
    for pair in (True, False):
        table = make_table("t", pair)
        train, valid = folds(table)
        model = EmbedLR(EmbedLRParams(backbone=str(bert_dir), max_length=32), 2, "raw").fit(train, valid, context())
        p = model.predict_proba(valid)
        assert p.shape == (len(valid), 2) and np.allclose(p.sum(1), 1)
        assert model.info_["n_features"] == (2 * 32 + 1 if pair else 32)


def test_embeddings_are_unit_length_and_ignore_padding(bert_dir):
    tokenizer, encoder = load_encoder({}, str(bert_dir))
    short, long = "good movie.", "the film was very really quite not too bad and the plot was fine."
    alone = sentence_encoder.embed_texts(tokenizer, encoder, [short], 32, 8)
    padded = sentence_encoder.embed_texts(tokenizer, encoder, [long, short], 32, 8)  # short row padded to the long one
    assert np.allclose(np.linalg.norm(padded, axis=1), 1, atol=1e-5)
    assert np.allclose(alone[0], padded[1], atol=1e-5)


def test_pair_design_is_order_invariant(bert_dir):
    table = make_table("t", True)
    swapped = make_table("s", True)
    a, b = table.views["raw"]
    swapped.views["raw"] = (b, a)
    model = EmbedLR(EmbedLRParams(backbone=str(bert_dir), max_length=32), 2, "raw")
    model.cache_ = {}
    rows = np.arange(len(table))
    x = model._design(Split([(table, rows)], table.y), fit=False)
    y = model._design(Split([(swapped, rows)], swapped.y), fit=False)
    assert np.allclose(x, y, atol=1e-6)


def test_each_table_is_embedded_once_across_folds(bert_dir, monkeypatch):
    calls = []
    real = sentence_encoder.embed_texts
    monkeypatch.setattr(sentence_encoder, "embed_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    table, cache = make_table("t", True), {}
    for k in (0, 1):
        train, valid = folds(table, k)
        model = EmbedLR(EmbedLRParams(backbone=str(bert_dir), max_length=32), 2, "raw")
        model.fit(train, valid, context(cache=cache)).predict_proba(valid)
    assert len(calls) == 2  # one call per side of the one table


def test_split_rows_follow_the_split_order(bert_dir):
    table, cache = make_table("t", True), {}
    rows = np.array([5, 1, 3])
    a, b = split_embeddings(cache, str(bert_dir), Split([(table, rows)], table.y[rows]), "raw", 32)
    full_a, full_b = split_embeddings(cache, str(bert_dir), Split([(table, np.arange(len(table)))], table.y), "raw", 32)
    assert np.array_equal(a, full_a[rows]) and np.array_equal(b, full_b[rows])


def test_pair_lgbm_embed_adds_the_cosine_column(bert_dir):
    """With `embed`, the design is the plain design plus one last column: the cosine of the two
    sides' embeddings (computed here straight from the encoder)."""
    table = make_table("t", True)
    train, valid = folds(table)
    plain = PairLGBM(PairLGBMParams(n_estimators=5, n_jobs=1), 2, "raw").fit(train, valid, context())
    model = PairLGBM(PairLGBMParams(n_estimators=5, n_jobs=1, embed=str(bert_dir)), 2, "raw").fit(train, valid, context())
    assert model.info_["n_features"] == plain.info_["n_features"] + 1
    x_plain, x = plain._design(valid, fit=False), model._design(valid, fit=False)
    np.testing.assert_array_equal(x[:, :-1], x_plain)
    tokenizer, encoder = load_encoder({}, str(bert_dir))
    a, b = (sentence_encoder.embed_texts(tokenizer, encoder, t, 128, 64) for t in valid.texts("raw"))
    np.testing.assert_allclose(x[:, -1], (a * b).sum(1), atol=1e-6)
    assert np.ptp(x[:, -1]) > 1e-3  # a real per-row cosine, not a constant
