"""SDPA for backbones transformers runs eager only (models/sdpa.py: MPNet, DeBERTa-v2/v3): the same outputs and
gradients as the eager attention, the same state dict, chosen per device by runtime.resolve, and
said in the fold record; a checkpoint reloads with it."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import save_tiny
from pipeline.models import runtime, sdpa
from pipeline.models.heads import attention_mask_4d
from pipeline.models.params import TransformerParams
from pipeline.models.transformer import load_checkpoint
from test_device_runtime import cuda_like
from test_transformer import CPU, WORDS, fit, make_table, params


def mpnet_config(**kw):
    from transformers import MPNetConfig

    return MPNetConfig(**{"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "intermediate_size": 64, "max_position_embeddings": 66, **kw})


@pytest.fixture(scope="module", params=["mpnet", "deberta_v3"])
def backbone_dir(request, tmp_path_factory):
    """A 2-layer, 32-wide random MPNet or DeBERTa-v3-like encoder with a WordPiece vocabulary of
    test_transformer's words (MPNet's own tokenizer class; BERT's for DeBERTa, whose SentencePiece
    tokenizer needs a trained model)."""
    from transformers import BertTokenizer, DebertaV2Model, MPNetModel, MPNetTokenizer

    words = sorted(set(WORDS)) + list(".,!?")
    if request.param == "mpnet":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = MPNetTokenizer(vocab={t: i for i, t in enumerate(specials + words)})
        model, config = MPNetModel, mpnet_config(vocab_size=len(tok), hidden_dropout_prob=0.0,
                                                 attention_probs_dropout_prob=0.0)
    else:
        tok = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)})
        model, config = DebertaV2Model, deberta_config(vocab_size=len(tok), pad_token_id=0, type_vocab_size=0)
    return save_tiny(tmp_path_factory.mktemp(request.param), tok, model, config)


def deberta_config(**kw):
    """DeBERTa-v3's attention settings: relative attention both ways over shared keys, log buckets."""
    from transformers import DebertaV2Config

    return DebertaV2Config(**{"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "intermediate_size": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                              "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 256,
                              "max_relative_positions": -1, "norm_rel_ebd": "layer_norm", "share_att_key": True,
                              "position_biased_input": False, **kw})


BACKBONES = {
    "mpnet": lambda: mpnet_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "deberta_v3": deberta_config,
    "deberta_c2p_unshared": lambda: deberta_config(pos_att_type=["c2p"], share_att_key=False, position_buckets=-1),
    "deberta_no_relative": lambda: deberta_config(relative_attention=False, pos_att_type=[]),
}


def pair_of_backbones(which: str = "mpnet"):
    """(eager backbone, the same weights re-classed to SDPA), dropout off."""
    from transformers import AutoModel

    torch.manual_seed(0)
    eager = AutoModel.from_config(BACKBONES[which]())
    fused = copy.deepcopy(eager)
    assert sdpa.use_sdpa(fused) == 2 and sdpa.use_sdpa(eager.embeddings) == 0
    return eager, fused


def batch():
    ids = torch.randint(5, 60, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:], mask[2, 4:] = 0, 0
    return ids, mask


@pytest.mark.parametrize("which", BACKBONES)
def test_sdpa_gives_the_eager_outputs_and_gradients(which):
    eager, fused = pair_of_backbones(which)
    assert sdpa.attention_used(fused) == "sdpa" and sdpa.attention_used(eager) == "eager"
    assert eager.state_dict().keys() == fused.state_dict().keys()   # checkpoints are the same either way
    ids, mask = batch()
    for m in (eager, fused):
        m.double().train()   # float64: what differs is the computation, not float32's rounding
    outs = []
    for m in (eager, fused):
        for key in ("mask2d", "mask4d"):   # transformers' mask, and the one the device loop builds
            given = mask if key == "mask2d" else attention_mask_4d(mask, m)
            out = m(ids, attention_mask=given).last_hidden_state * mask[..., None]   # padded rows are not read
            out.square().sum().backward()
            outs.append((out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
            m.zero_grad()
    want = outs[0]
    for out, grads in outs[1:]:
        torch.testing.assert_close(out, want[0], atol=1e-10, rtol=1e-9)
        assert grads.keys() == want[1].keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, want[1][name], atol=1e-8, rtol=1e-8)
    if which == "mpnet":
        assert "encoder.relative_attention_bias.weight" in want[1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("which", BACKBONES)
def test_cuda_sdpa_kernels_give_the_eager_outputs_and_gradients(which, dtype):
    """On a GPU SDPA picks a fused kernel (memory-efficient with a float bias): an odd length (37,
    which that kernel pads internally), padded rows, autocast as the trainer runs it, and the
    gradients through the bias (MPNet's relative_attention_bias) against eager's."""
    eager, fused = (m.cuda().train() for m in pair_of_backbones(which))
    ids = torch.randint(5, 60, (4, 37), generator=torch.Generator().manual_seed(2)).cuda()
    mask = torch.ones(4, 37, dtype=torch.long, device="cuda")
    mask[1, 30:], mask[2, 5:], mask[3, 36:] = 0, 0, 0
    outs = []
    for m in (eager, fused):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = m(ids, attention_mask=attention_mask_4d(mask, m)).last_hidden_state.float() * mask[..., None]
        out.square().sum().backward()
        outs.append((out.detach(), {n: p.grad.float().clone() for n, p in m.named_parameters() if p.grad is not None}))
    tol = dict(atol=2e-3, rtol=2e-3) if dtype == torch.float32 else dict(atol=6e-2, rtol=6e-2)
    torch.testing.assert_close(outs[1][0], outs[0][0], **tol)
    for name, g in outs[0][1].items():
        scale = g.abs().max().clamp(min=1e-6)   # relative to the tensor's own size: bf16 sums differ in order
        torch.testing.assert_close(outs[1][1][name] / scale, g / scale, **tol, msg=name)


@pytest.mark.parametrize("which", ["mpnet", "deberta_v3"])
def test_asking_for_attention_probabilities_falls_back_to_eager(which):
    eager, fused = pair_of_backbones(which)
    ids, mask = batch()
    with torch.no_grad():
        a, b = (m(ids, attention_mask=mask, output_attentions=True) for m in (eager, fused))
    assert len(b.attentions) == 2
    for x, y in zip(a.attentions, b.attentions):
        torch.testing.assert_close(x, y)


def test_bias_of_a_bool_mask_and_of_no_mask():
    bias = torch.randn(1, 2, 3, 3)
    keep = torch.tensor([[True, True, False]])[:, None, None, :]
    got = sdpa.attention_bias(bias, keep, torch.float32)
    assert torch.equal(got[..., :2], bias[..., :2]) and (got[..., 2] == torch.finfo(torch.float32).min).all()
    assert sdpa.attention_bias(bias, None, torch.bfloat16).dtype == torch.bfloat16
    assert sdpa.attention_bias(None, None, torch.float32) is None


def test_the_adapter_is_chosen_per_device():
    cpu, cuda = (runtime.resolve(TransformerParams(), torch.device(d)) for d in ("cpu", "cuda"))
    assert not cpu.sdpa_adapter and cuda.sdpa_adapter   # CPU: eager with its fast dropout masks, as measured
    assert runtime.resolve(TransformerParams(attention="sdpa"), CPU).sdpa_adapter
    assert not runtime.resolve(TransformerParams(attention="eager"), torch.device("cuda")).sdpa_adapter


def test_the_trainer_runs_sdpa_and_says_so(backbone_dir, tmp_path, monkeypatch):
    table = make_table("train", pair=True)
    eager, valid = fit(params(backbone_dir, attention="eager"), table)
    fused, _ = fit(params(backbone_dir, attention="sdpa"), table)
    assert eager.info_["runtime"]["attention"] == "eager" and fused.info_["runtime"]["attention"] == "sdpa"
    np.testing.assert_allclose(fused.predict_proba(valid), eager.predict_proba(valid), atol=1e-5)
    fused.save(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert sdpa.attention_used(loaded.module_.backbone) == "sdpa"
    np.testing.assert_allclose(loaded.predict_proba(valid), fused.predict_proba(valid), atol=1e-6)
    auto_cpu, _ = fit(params(backbone_dir), table)
    assert sdpa.attention_used(auto_cpu.module_.backbone) == "eager"   # CPU's auto: unchanged
    cuda_like(monkeypatch, sdpa_adapter=True)
    auto_cuda, _ = fit(params(backbone_dir, sparse_embeddings=False), table)
    assert auto_cuda.info_["runtime"]["attention"] == "sdpa"


def test_pretraining_on_the_device_loop_runs_sdpa(tmp_path, monkeypatch):
    """The MLM pre-training of an MPNet on the CUDA loop (run on the CPU) re-classes its attention
    and learns the weights the eager host loop learns."""
    from transformers import MPNetModel, MPNetTokenizer

    from pipeline.config import PretrainConfig
    from pipeline.models import mlm_training

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = MPNetTokenizer(vocab={t: i for i, t in enumerate(specials + sorted(set(WORDS)))})
    base = save_tiny(tmp_path / "mpnet", tok, MPNetModel, mpnet_config(vocab_size=len(tok), hidden_dropout_prob=0.0,
                                                                      attention_probs_dropout_prob=0.0))
    texts = [" ".join(WORDS[i % 20:i % 20 + 3 + i % 6]) for i in range(32)]
    p = PretrainConfig(backbone=str(base), seed=3, epochs=1, batch_size=8, max_length=32, lr=1e-3)
    run = lambda out: mlm_training.run(p, texts, out, "fp", "x: 1\n", record_name="pretrain.json")  # noqa: E731
    run(tmp_path / "host")
    swapped, real = [], sdpa.use_sdpa
    monkeypatch.setattr(sdpa, "use_sdpa", lambda m: swapped.append(real(m)) or swapped[-1])
    monkeypatch.setattr(mlm_training, "device_loop", lambda device: True)
    run(tmp_path / "device")
    assert swapped == [2]
    from safetensors.torch import load_file

    host, device = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("host", "device"))
    for name, value in host.items():
        torch.testing.assert_close(device[name], value, atol=1e-5, rtol=1e-4)
