"""How the transformer trainer runs on its device (models/runtime.py): `auto` settings per device and
the fold record that says them, the device-side loop (token ids gathered on the device, the loss
summed there and read every few steps), length buckets and token-budget inference batches,
compiled encoder layers, gradient checkpointing, memory released between folds.

CUDA's choices are exercised on the CPU by resolving the runtime as on CUDA (cuda_like); the tests
marked `cuda` run on a GPU only and are skipped without one.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import weakref

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import load_config, model_identity
from pipeline.errors import PipelineError
from pipeline.models import runtime, tokens, transformer
from pipeline.models.params import TransformerParams, as_dict
from pipeline.models.transformer import LossTally, TransformerModel
from test_transformer import CPU, bert_dir, fit, make_table, params, process_state_kept  # noqa: F401

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile's tracing without code generation: the compiled path in seconds on a CPU."""
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", "aot_eager")


def cuda_like(monkeypatch, **kw) -> None:
    """Fits resolve the runtime CUDA would pick (ids on the device, reads every 3 steps, dense
    AdamW, torch's dropout, token-budget inference), run on the CPU."""
    real = runtime.resolve
    choices = dict(device="cuda", device_batches=True, sync_steps=3, sparse_embeddings=False, fast_dropout=False,
                   predict_tokens=64)

    def resolve(p, device, fitting=True):
        return dataclasses.replace(real(p, device, fitting), **{**choices, **kw})

    monkeypatch.setattr(runtime, "resolve", resolve)


def proba(p: TransformerParams, table, seed: int = 0) -> np.ndarray:
    model, valid = fit(p, table, seed)
    return model.predict_proba(valid)


# ----------------------------------------------------------------------------- auto per device


def test_auto_settings_per_device():
    cpu, cuda = (runtime.resolve(TransformerParams(), torch.device(d)) for d in ("cpu", "cuda"))
    assert (cpu.sparse_embeddings, cpu.fast_dropout, cpu.device_batches, cpu.sync_steps, cpu.predict_tokens,
            cpu.tf32, cpu.compile, cpu.length_buckets) == (True, True, False, 1, 0, False, False, False)
    assert (cuda.sparse_embeddings, cuda.fast_dropout, cuda.device_batches, cuda.sync_steps, cuda.predict_tokens,
            cuda.tf32, cuda.compile) == (False, False, True, runtime.SYNC_STEPS, runtime.PREDICT_TOKENS, True, False)
    on = runtime.resolve(TransformerParams(compile=True, predict_tokens=0), torch.device("cuda"))
    assert (on.compile, on.compile_mode, on.length_buckets, on.static_rows, on.predict_tokens) == \
        (True, "default", True, True, 0)
    assert not runtime.resolve(TransformerParams(compile=True), torch.device("cuda"), fitting=False).compile


def test_the_fold_record_says_what_ran(bert_dir, monkeypatch):
    table = make_table("train", pair=True)
    plain, _ = fit(params(bert_dir), table)
    assert "runtime" not in plain.info_   # the plain CPU path: records as they were before
    set_one, _ = fit(params(bert_dir, predict_tokens=48), table)
    assert set_one.info_["runtime"] == runtime.resolve(set_one.params, CPU).record("sdpa")
    cuda_like(monkeypatch)
    like, _ = fit(params(bert_dir, sparse_embeddings=False), table)
    rec = like.info_["runtime"]
    assert (rec["device_batches"], rec["sync_steps"], rec["optimizer"], rec["fast_dropout"]) == \
        (True, 3, "adamw_fused", False)


def test_new_settings_enter_the_identity_only_when_set(tmp_path):
    assert not set(TransformerParams.QUIET) & set(as_dict(TransformerParams()))
    assert as_dict(TransformerParams(compile=True))["compile"] is True
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"experiment": "x", "data": {"dir": str(tmp_path), "text_a": "a"},
                                        "models": [{"name": "tr", "kind": "transformer",
                                                    "params": {"backbone": str(tmp_path)}}]}))
    plain = load_config(cfg_file).model("tr")
    assert not set(TransformerParams.QUIET) & set(plain.params)   # fingerprints of existing models unchanged
    on = load_config(cfg_file, ["models.tr.params.compile=on", "models.tr.params.predict_tokens=4096"]).model("tr")
    assert on.params["compile"] is True and model_identity(on)["params"]["predict_tokens"] == 4096
    with pytest.raises(PipelineError, match="compile"):
        load_config(cfg_file, ["models.tr.params.compile=sometimes"])


# ----------------------------------------------------------------------------- the device-side loop


def test_device_loss_tally_equals_the_host_sum():
    losses = torch.rand(100, dtype=torch.float32) * 7
    tally, host = LossTally(CPU), 0.0
    for value in losses:
        tally.add(value, 3)
        host += value.item()
    assert tally.mean() == host / 300   # float64 sums of the same float32 values, in the same order


def test_deferred_reads_give_the_per_step_sum(bert_dir, monkeypatch):
    losses, epochs, reads = [], [], []
    real_loss, real_epoch, real_check = transformer.batch_loss, TransformerModel._train_epoch, LossTally.check_loss
    monkeypatch.setattr(transformer, "batch_loss", lambda *a: losses.append(real_loss(*a)) or losses[-1])
    monkeypatch.setattr(TransformerModel, "_train_epoch", lambda self, *a: epochs.append(real_epoch(self, *a)) or epochs[-1])
    monkeypatch.setattr(LossTally, "check_loss", lambda self, where: reads.append(where) or real_check(self, where))
    cuda_like(monkeypatch)
    fit(params(bert_dir, batch_size=2, sparse_embeddings=False), make_table("train", pair=True))  # 20 rows, 10 steps
    assert epochs == [sum(v.item() for v in losses) / 20]
    assert [w.split()[-1] for w in reads] == ["3", "6", "9", "10"]   # every 3 steps and the epoch's end


def test_a_deferred_non_finite_loss_still_stops_the_fold(bert_dir, monkeypatch):
    monkeypatch.setattr(transformer, "batch_loss", lambda logits, y, w, *task: logits.sum() * math.nan)
    cuda_like(monkeypatch)
    with pytest.raises(PipelineError, match=r"^test fold 1/2 epoch 1 by step 3: training loss is nan"):
        fit(params(bert_dir, batch_size=2), make_table("train", pair=False))


def test_batches_gathered_on_the_device_equal_host_collation():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, 30)
    enc = tokens.Encoded([rng.integers(5, 99, n).astype(np.int32) for n in lengths],
                         [rng.integers(0, 2, n).astype(np.int8) for n in lengths], lengths)
    feed = tokens.Feed(enc, 0, CPU, 24, on_device=True)
    for group in feed.plan([[rng.permutation(30)[:7]], [np.array([3])]], lambda m: 8):
        for m in group:
            want = tokens.collate(enc, m.rows, 0, CPU, 24)
            got = feed.inputs(m)
            for key in want:
                if got[key] is None:   # no padding in the batch: the mask is left to the backbone
                    assert key == "attention_mask" and bool(want[key].all())
                else:
                    assert torch.equal(got[key], want[key]), key


def test_a_batch_without_a_mask_is_its_own_compile_variant():
    """A compiled module compiles once per shape and once more for a batch that runs without a
    mask (another graph): the clock that keeps compile time out of steady speed keys on both."""
    lengths = np.array([8, 8, 8, 5])
    enc = tokens.Encoded([np.full(n, 7, np.int32) for n in lengths], None, lengths)
    batches = [[np.array([0, 1]), np.array([2, 3])]]
    device, host = tokens.Feed(enc, 0, CPU, 8, on_device=True), tokens.Feed(enc, 0, CPU, 8)
    m_full, m_padded = device.plan(batches, lambda m: 2)[0]
    assert m_full.shape == m_padded.shape
    assert device.variant(m_full) == (2, 8, True) and device.inputs(m_full)["attention_mask"] is None
    assert device.variant(m_padded) == (2, 8, False) and device.inputs(m_padded)["attention_mask"] is not None
    assert {host.variant(m) for m in host.plan(batches, lambda m: 2)[0]} == {(2, 8, False)}   # always a mask


def test_the_compile_clock_keys_on_each_batchs_variant(bert_dir, aot_eager, monkeypatch):
    """Training steps and prediction batches reach the clock as Feed.variant's keys (shape and
    mask), so a maskless batch's compile is not counted as steady speed."""
    cuda_like(monkeypatch)
    made, real_variant = [], tokens.Feed.variant

    def variant(self, m):
        made.append(real_variant(self, m))
        return made[-1]

    monkeypatch.setattr(tokens.Feed, "variant", variant)
    model, valid = fit(params(bert_dir, compile=True), make_table("train", pair=True))
    model.predict_proba(valid)
    given = model._clock.seen
    assert {key for _, key in given} == set(made) and {train for train, _ in given} == {True, False}
    assert all(len(key) == 3 for key in made)
    made.clear()
    fit(params(bert_dir), make_table("train", pair=True))   # eager: the clock looks at nothing
    assert made == []


def test_the_device_loop_trains_what_the_host_loop_trains(bert_dir, monkeypatch):
    table = make_table("train", pair=True)
    host = proba(params(bert_dir, sparse_embeddings=False, fast_dropout=False), table)
    cuda_like(monkeypatch)
    device = proba(params(bert_dir, sparse_embeddings=False), table)
    np.testing.assert_allclose(device, host, atol=1e-6)


def mask_checks(monkeypatch) -> list:
    """Counts transformers' checks of whether a 2D mask is all ones (a host read on CUDA; a batch
    without padding passes None, which is not read)."""
    from transformers import masking_utils

    calls, real = [], masking_utils._ignore_bidirectional_mask_sdpa

    def counted(padding_mask, *a, **k):
        if padding_mask is not None:
            calls.append(padding_mask.shape)
        return real(padding_mask, *a, **k)

    monkeypatch.setattr(masking_utils, "_ignore_bidirectional_mask_sdpa", counted)
    return calls


def test_the_device_loop_never_reads_a_mask_back(bert_dir, monkeypatch):
    table = make_table("train", pair=True)   # pairs of different lengths: padded batches
    calls = mask_checks(monkeypatch)
    proba(params(bert_dir, sparse_embeddings=False), table)
    assert calls   # the host loop gives the backbone its 2D mask, as before
    calls.clear()
    cuda_like(monkeypatch)
    proba(params(bert_dir, sparse_embeddings=False), table)
    assert calls == []


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_prebuilt_mask_equals_the_backbones_own(bert_dir, attention):
    from transformers import AutoModel

    from pipeline.models.heads import attention_mask_4d

    backbone = AutoModel.from_pretrained(bert_dir, attn_implementation=attention).eval()
    ids = torch.randint(5, 30, (3, 9))
    mask = (torch.arange(9)[None, :] < torch.tensor([[9], [4], [6]])).long()
    built = attention_mask_4d(mask, backbone)
    assert built.ndim == 4 and built.dtype == (torch.bool if attention == "sdpa" else torch.float32)
    with torch.no_grad():
        want = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        got = backbone(input_ids=ids, attention_mask=built).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=0, atol=1e-6)
    backbone.config.model_type = "deberta-v2"   # a model with its own masks gets the 2D mask
    assert attention_mask_4d(mask, backbone) is mask


# ----------------------------------------------------------------------------- shapes


def test_length_buckets_and_token_budgets_change_no_prediction(bert_dir):
    table = make_table("train", pair=True)
    model, valid = fit(params(bert_dir), table)
    plain = model.predict_proba(valid)
    for change in (dict(length_buckets=True), dict(length_buckets=True, static_rows=True),
                   dict(predict_tokens=40), dict(predict_tokens=40, length_buckets=True, static_rows=True)):
        model.runtime_ = dataclasses.replace(model.runtime_, **change)
        np.testing.assert_allclose(model.predict_proba(valid), plain, atol=1e-6, err_msg=str(change))
    np.testing.assert_allclose(proba(params(bert_dir, length_buckets=True), table), plain, atol=1e-6)


def test_static_rows_pad_with_weightless_rows(bert_dir, monkeypatch):
    table = make_table("train", pair=True, n=42)   # 21 training rows: the last batch of 8 is short
    plain = proba(params(bert_dir), table)
    real = runtime.resolve
    monkeypatch.setattr(runtime, "resolve", lambda p, d, fitting=True: dataclasses.replace(
        real(p, d, fitting), static_rows=True, length_buckets=True))
    np.testing.assert_allclose(proba(params(bert_dir), table), plain, atol=1e-6)


def test_token_budget_batches():
    lengths = np.array([5, 40, 12, 33, 7, 7, 60, 18])
    width = lambda n: tokens.batch_width(n, 64, buckets=True)   # noqa: E731
    batches = tokens.predict_batches(lengths, 2, max_tokens=100, width=width)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    assert [lengths[b].max() for b in batches] == sorted((lengths[b].max() for b in batches), reverse=True)
    assert all(len(b) == 1 or len(b) * width(lengths[b].max()) <= 100 for b in batches)
    assert [tokens.batch_width(n, 128, True) for n in (3, 17, 25, 100, 128)] == [16, 24, 32, 128, 128]
    assert tokens.batch_width(100, 110, True) == 110   # never above max_length


# ----------------------------------------------------------------------------- compile, checkpointing, memory


def test_compiled_layers_equal_eager_and_are_reused(bert_dir, aot_eager):
    from torch._dynamo.utils import counters

    table = make_table("train", pair=True)
    eager = proba(params(bert_dir), table)
    compiled, valid = fit(params(bert_dir, compile=True), table)
    np.testing.assert_allclose(compiled.predict_proba(valid), eager, atol=1e-5)
    info = compiled.info_
    assert info["runtime"]["compile"] and info["runtime"]["length_buckets"] and info["compile_seconds"] > 0
    assert info["train_compile_seconds"] <= info["train_seconds"]
    graphs = counters["stats"]["unique_graphs"]
    again = proba(params(bert_dir, compile=True), table)   # another fold's model: new layers, same code
    assert counters["stats"]["unique_graphs"] == graphs
    np.testing.assert_allclose(again, eager, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(bert_dir, monkeypatch):
    grads = []
    step = TransformerModel._step

    def spy(self, optim, *rest):
        grads.append([q.grad.detach().to_dense().clone() for q in optim.params])
        return step(self, optim, *rest)

    monkeypatch.setattr(TransformerModel, "_step", spy)
    table = make_table("train", pair=True, n=32)   # 16 training rows: one step
    fit(params(bert_dir, batch_size=16), table)
    model, _ = fit(params(bert_dir, batch_size=16, grad_checkpointing=True), table)
    backbone = model.module_.backbone
    assert getattr(backbone, "is_activation_checkpointing", None) or backbone.is_gradient_checkpointing
    assert model.info_["runtime"]["grad_checkpointing"]
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-7, rtol=1e-5)


def test_memory_is_released_between_folds(bert_dir, monkeypatch):
    released, optims = [], []
    monkeypatch.setattr(runtime, "release_memory", lambda device: released.append(device.type))
    build = transformer.build_optim

    def keep(*a, **kw):
        optims.append(weakref.ref(opt := build(*a, **kw)))
        return opt

    monkeypatch.setattr(transformer, "build_optim", keep)
    table = make_table("train", pair=True)
    models = [fit(params(bert_dir), table, seed)[0] for seed in (0, 1)]
    assert released == ["cpu", "cpu"]   # before each fold
    gc.collect()
    assert len(optims) == 2 and all(ref() is None for ref in optims)   # moments and gradients gone with the fit
    assert all(q.grad is None for m in models for q in m.module_.parameters())


def test_release_memory_empties_the_cache_and_restarts_the_peak(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2 ** 20)
    runtime.release_memory(CPU)
    assert calls == [] and runtime.peak_memory_mb(CPU) is None
    runtime.release_memory(torch.device("cuda"))
    assert calls == ["empty", "reset"] and runtime.peak_memory_mb(torch.device("cuda")) == 3.0


def test_unsupported_checkpointing_is_one_line():
    class NoCheckpoints(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(PipelineError, match="grad_checkpointing is not supported by backbone 'x'"):
        runtime.enable_checkpointing(NoCheckpoints(), "x")


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@CUDA
def test_cuda_fit_predicts_what_the_cpu_fit_predicts(bert_dir, monkeypatch):
    table = make_table("train", pair=True)
    gpu = proba(params(bert_dir, sparse_embeddings=False, tf32=False), table)
    monkeypatch.setattr(transformer, "default_device", lambda: CPU)
    cpu = proba(params(bert_dir, sparse_embeddings=False, fast_dropout=False), table)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


@pytest.mark.cuda
@CUDA
def test_cuda_compiled_layers_equal_eager(bert_dir):
    table = make_table("train", pair=True)
    eager = proba(params(bert_dir, tf32=False), table)
    for mode in ("default", "reduce-overhead"):
        compiled = proba(params(bert_dir, tf32=False, compile=True, compile_mode=mode), table)
        np.testing.assert_allclose(compiled, eager, atol=1e-4, err_msg=mode)


@pytest.mark.cuda
@CUDA
def test_cuda_peak_memory_stays_one_folds(bert_dir):
    table = make_table("train", pair=True)
    peaks, after = [], []
    for seed in range(3):
        model, valid = fit(params(bert_dir), table, seed)
        model.predict_proba(valid)
        peaks.append(model.info_["peak_memory_mb"])
        del model
        runtime.release_memory(torch.device("cuda"))
        after.append(torch.cuda.memory_allocated())
    assert max(peaks) <= 1.1 * min(peaks) and after[-1] <= after[0]


@pytest.mark.cuda
@CUDA
def test_cuda_frozen_embeddings_equal_the_cpus(bert_dir, monkeypatch):
    """The encoder of embed_lr and pair_lgbm's `embed` runs on the process's GPU (a GPU slot, a
    local run on a GPU machine): the same float32 embeddings as on the CPU."""
    from pipeline.models import backbone, encoder

    texts = ["a cat sat on the mat", "the dog ran", "a cat ran on the mat today", "dog"]
    tok, gpu_enc = encoder.load_encoder({}, str(bert_dir))
    assert gpu_enc.get_input_embeddings().weight.device.type == "cuda"
    gpu = encoder.embed_texts(tok, gpu_enc, texts, 16, 2)
    monkeypatch.setattr(backbone, "default_device", lambda: CPU)
    tok, cpu_enc = encoder.load_encoder({}, str(bert_dir))
    np.testing.assert_allclose(gpu, encoder.embed_texts(tok, cpu_enc, texts, 16, 2), atol=1e-5)
