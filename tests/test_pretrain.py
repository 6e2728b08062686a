"""In-task pre-training: the MLM stage on tiny random BERT / RoBERTa backbones built here, whole-word
masking, the tied head of a head-less checkpoint, resume after a kill, the fingerprint chain to the
models built on it, and contextual word substitution."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, WORDS, Exp, tiny_pairs, tiny_roberta
from pipeline.models import mlm
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.faults import KILL_AT
from pipeline.fileio import read_json
from pipeline.prepared import load_prepared
from pipeline.provenance import checked_models, identity

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# words of conftest.tiny_pairs cut into WordPiece pieces, so whole-word masking has pieces to join
PIECES = {"market": ["mark", "##et"], "company": ["comp", "##any"], "council": ["coun", "##cil"],
          "profit": ["pro", "##fit"], "shares": ["share", "##s"]}


def bert_vocab() -> list[str]:
    vocab = [w for w in WORDS if w not in PIECES]
    vocab += sorted({p for parts in PIECES.values() for p in parts})
    return SPECIALS + vocab + list(".,!?")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BertModel (no MLM head) with a WordPiece vocabulary that cuts some
    of the test's words into pieces."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("bert")
    BertTokenizer(vocab={t: i for i, t in enumerate(bert_vocab())}).save_pretrained(d)
    config = BertConfig(vocab_size=len(bert_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def roberta(tmp_path_factory) -> Path:
    """A 2-layer random RobertaModel with a byte-level BPE trained on the test's texts."""
    texts = pd.concat([tiny_pairs(90, 0), tiny_pairs(30, 1)])
    return tiny_roberta(tmp_path_factory.mktemp("roberta"), tmp_path_factory.mktemp("bpe"),
                        list(texts.text_a) + list(texts.text_b), vocab_size=300)


PRETRAIN = {"epochs": 2, "batch_size": 16, "max_length": 32, "lr": 1e-3, "seed": 3, "warmup": 0.1}
FINETUNE = {"name": "tr", "kind": "transformer", "view": "lower",
            "params": {"backbone": "pretrained:mlm", "epochs": 1, "batch_size": 16, "max_length": 32,
                       "patience": 0, "save_checkpoint": False, "precision": "fp32"}}


def configure(exp: Exp, backbone: Path, models: list | None = None, **pretrain) -> None:
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["pretrain"] = {**PRETRAIN, "backbone": str(backbone), **pretrain}
    cfg["models"] = models if models is not None else [FINETUNE]
    cfg["folds"]["n_splits"] = 2
    exp.write_config(cfg)


def out_dir(exp: Exp) -> Path:
    return exp.tmp / "work" / "tiny" / "pretrained" / "mlm"


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("which", ["tiny_bert", "roberta"])
def test_pretrained_backbone_loads_and_finetunes_through_train(exp, which, request):
    from transformers import AutoModel

    base = request.getfixturevalue(which)
    configure(exp, base)
    assert exp.run("preprocess") == 0 and exp.run("folds") == 0
    assert exp.run("pretrain") == 0
    out = out_dir(exp)
    record = read_json(out / "pretrain.json")
    assert record["steps"] == PRETRAIN["epochs"] * -(-record["n_texts"] // PRETRAIN["batch_size"])
    assert not (out / "resume").exists()
    encoder = AutoModel.from_pretrained(out)   # an ordinary encoder, nothing missing or left over
    before = AutoModel.from_pretrained(base)
    name = "embeddings.word_embeddings.weight"
    assert not torch.equal(encoder.state_dict()[name], before.state_dict()[name])  # it learned
    assert exp.run("train") == 0
    manifest = read_json(exp.models / "tr" / "manifest.json")
    assert manifest["config"]["pretrained"] == {"backbone": record["fingerprint"]}
    assert exp.run("pretrain") == 0 and read_json(out / "pretrain.json") == record   # skipped on rerun
    by_path = load_config(exp.config, [f"models.tr.params.backbone={out}"])
    train, test, _ = load_prepared(by_path)
    assert identity(by_path, by_path.model("tr"), train, test)["pretrained"] == {"backbone": record["fingerprint"]}


def test_no_pretrain_section_is_one_line_noop(exp, capsys):
    assert exp.run("pretrain") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "pretrain: the config has no pretrain section; nothing to do"


def test_pretrained_name_needs_the_pretrain_section(exp, tiny_bert):
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"] = [FINETUNE]
    exp.write_config(cfg)
    with pytest.raises(PipelineError, match="pretrained:mlm but the config has no pretrain section"):
        load_config(exp.config)


def test_labels_are_never_read(exp, tiny_bert, tmp_path):
    """The same texts with scrambled labels give the same fingerprint and identical weights."""
    assert exp.run("preprocess") == 0
    configure(exp, tiny_bert, max_steps=3)
    assert exp.run("pretrain") == 0
    first = read_json(out_dir(exp) / "pretrain.json")
    train = pd.read_csv(exp.tmp / "in" / "train.csv")
    train["label"] = np.random.default_rng(0).permutation(train["label"].to_numpy())
    train.to_csv(exp.tmp / "in" / "train.csv", index=False)
    assert exp.run("preprocess") == 0 and exp.run("pretrain") == 0    # skipped: same fingerprint
    assert read_json(out_dir(exp) / "pretrain.json") == first
    assert exp.run("pretrain", "--force") == 0
    again = read_json(out_dir(exp) / "pretrain.json")
    assert again["files"] == first["files"]  # byte-identical weights, head and tokenizer


def test_changed_pretrain_setting_marks_the_model_stale(exp, tiny_bert):
    configure(exp, tiny_bert, max_steps=2)
    assert exp.run("preprocess") == 0 and exp.run("folds") == 0
    assert exp.run("pretrain") == 0 and exp.run("train") == 0
    checked_models(load_config(exp.config), None, 0)
    configure(exp, tiny_bert, max_steps=2, lr=5e-4)
    with pytest.raises(PipelineError, match=r"model 'tr': params.backbone=pretrained:mlm but .* is made with other "
                                           r"settings or texts: run `python -m pipeline.pretrain"):
        checked_models(load_config(exp.config), None, 0)
    assert exp.run("ensemble") == 2
    assert exp.run("train") == 2  # refused until the pretrain stage ran with the new settings
    assert exp.run("pretrain") == 0 and exp.run("train") == 0
    checked_models(load_config(exp.config), None, 0)


def test_a_pretrain_replaced_under_the_readers_is_refused_by_every_reader(exp, tiny_bert, capsys):
    """After a full run, the pretrain stage run again with other settings (given on its command line
    only) replaces the backbone: ensemble, report and serving refuse the members fitted on the old one."""
    from pipeline import predictor

    emb = {"name": "emb", "kind": "embed_lr", "view": "lower", "params": {"backbone": "pretrained:mlm", "max_length": 32}}
    configure(exp, tiny_bert, models=[emb], max_steps=2)
    for stage in ("preprocess", "folds", "pretrain", "train", "ensemble", "report"):
        assert exp.run(stage) == 0, stage
    assert exp.run("pretrain", "pretrain.max_steps=3") == 0
    capsys.readouterr()
    for stage in ("ensemble", "report"):
        assert exp.run(stage) == 2, stage
        assert "made with other settings or texts" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="made with other settings or texts"):
        predictor.load_ensemble(load_config(exp.config))


def run_stage(config: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at:
        env[KILL_AT] = kill_at
    return subprocess.run([sys.executable, "-m", "pipeline.pretrain", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_resume_after_kill_gives_the_same_weights(exp, tiny_bert, tmp_path):
    """Killed after the step-4 checkpoint, at step 6: the rerun resumes at 4 and ends where an
    uninterrupted run ends, bit for bit (the masks and batch order are seeded per step, the dropout
    RNG, AdamW and the schedule are in the checkpoint)."""
    assert exp.run("preprocess") == 0
    configure(exp, tiny_bert, save_every=4, epochs=1)
    killed = run_stage(exp.config, "pretrain:step6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert read_json(out_dir(exp) / "resume" / "resume.json")["step"] == 4
    resumed = run_stage(exp.config)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step 4" in resumed.stdout
    interrupted = read_json(out_dir(exp) / "pretrain.json")
    assert exp.run("pretrain", "--force") == 0
    clean = read_json(out_dir(exp) / "pretrain.json")
    assert interrupted["files"] == clean["files"] and interrupted["final_loss"] == clean["final_loss"]


# ----------------------------------------------------------------------------- library


def test_whole_word_masking_masks_every_piece_and_never_specials(tiny_bert):
    tokenizer, _ = mlm.masked_lm(str(tiny_bert))
    texts = [" ".join(["market company council profit shares"] * 4)] * 50
    corpus = mlm.encode_corpus(tokenizer, texts, 64)
    random_ids = mlm.random_token_ids(tokenizer)
    special = set(tokenizer.all_special_ids)
    assert not special & set(random_ids.tolist())
    rng = np.random.default_rng(0)
    predicted = 0
    for ids, words in zip(corpus.ids, corpus.words):
        assert (words == -1).sum() == 2 and {ids[0], ids[-1]} <= special
        inputs, labels = mlm.whole_word_mask(ids, words, 0.15, rng, tokenizer.mask_token_id, random_ids)
        picked = labels != mlm.IGNORE
        assert not picked[words == -1].any()
        for w in np.unique(words[picked]):   # all pieces of a chosen word or none
            assert picked[words == w].all()
        assert len(np.unique(words[picked])) == round(0.15 * 20)
        assert (labels[picked] == ids[picked]).all() and (inputs[~picked] == ids[~picked]).all()
        predicted += picked.sum()
        masked = (inputs == tokenizer.mask_token_id) & picked
        assert masked.sum() <= picked.sum()
    share = sum((mlm.whole_word_mask(i, w, 0.5, np.random.default_rng(k), tokenizer.mask_token_id, random_ids)[0]
                 == tokenizer.mask_token_id).sum() for k, (i, w) in enumerate(zip(corpus.ids, corpus.words)))
    total = sum((mlm.whole_word_mask(i, w, 0.5, np.random.default_rng(k), tokenizer.mask_token_id, random_ids)[1]
                 != mlm.IGNORE).sum() for k, (i, w) in enumerate(zip(corpus.ids, corpus.words)))
    assert 0.72 < share / total < 0.88   # 80% of predicted tokens become the mask token


def test_headless_checkpoint_gets_a_tied_fresh_head(tiny_bert, roberta):
    for base in (tiny_bert, roberta):
        _, model = mlm.masked_lm(str(base), seed=1)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        _, again = mlm.masked_lm(str(base), seed=1)
        head = mlm.head_state(model)
        assert head and all(torch.equal(v, mlm.head_state(again)[k]) for k, v in head.items())  # seeded
        tokenizer = mlm.masked_lm(str(base))[0]
        corpus = mlm.encode_corpus(tokenizer, ["market shares rose", "the bank plan won a vote"], 16)
        batch = mlm.masked_batch(corpus, np.arange(2), 0.5, np.random.default_rng(0), tokenizer,
                                 mlm.random_token_ids(tokenizer))
        with torch.no_grad():  # the loss on the predicted tokens only is the model's own loss
            assert torch.allclose(mlm.mlm_loss(model, batch), model(**batch).loss, atol=1e-5)
        _, other = mlm.masked_lm(str(base), seed=2)
        assert any(not torch.equal(v, mlm.head_state(other)[k]) for k, v in head.items() if v.ndim == 2)


def test_predicted_positions_pick_the_rows_boolean_indexing_picks(tiny_bert):
    tokenizer, model = mlm.masked_lm(str(tiny_bert), seed=1)
    corpus = mlm.encode_corpus(tokenizer, [" ".join(WORDS[i:i + 3 + i % 5]) for i in range(8)], 32)
    batch = mlm.masked_batch(corpus, np.arange(8), 0.3, np.random.default_rng(0), tokenizer,
                             mlm.random_token_ids(tokenizer))
    with torch.no_grad():
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        picked = batch["labels"] != mlm.IGNORE
        want = mlm.head_module(model)(hidden[picked]), batch["labels"][picked]
        for got in (mlm.predicted_logits(model, batch),
                    mlm.predicted_logits(model, {**batch, "picked": mlm.picked_positions(batch["labels"])})):
            assert all(torch.equal(g, w) for g, w in zip(got, want))   # the same rows, bit for bit


def test_the_device_loop_pretrains_what_the_host_loop_pretrains(tiny_bert, tmp_path, monkeypatch):
    """The CUDA loop (positions and 4D mask built before the copy, the loss read every SYNC_STEPS
    steps and at checkpoints) run on the CPU: the weights and final loss of the host loop, with no
    read of the mask back to the host and 8 loss reads where the host loop makes 17."""
    from transformers import masking_utils

    from pipeline.config import PretrainConfig
    from pipeline.models import mlm_training

    texts = [" ".join(WORDS[i % 20:i % 20 + 2 + i % 7]) for i in range(64)]   # padded batches
    p = PretrainConfig(backbone=str(tiny_bert), seed=3, epochs=2, batch_size=8, max_length=32, lr=1e-3)
    reads, checks = [], []
    real_read, real_check = mlm_training.read_loss, masking_utils._ignore_bidirectional_mask_sdpa
    monkeypatch.setattr(mlm_training, "read_loss", lambda t: reads.append(1) or real_read(t))
    monkeypatch.setattr(masking_utils, "_ignore_bidirectional_mask_sdpa",
                        lambda m, *a, **k: checks.append(m is not None) or real_check(m, *a, **k))

    def pretrain(out: Path) -> tuple[dict, dict]:
        reads.clear(), checks.clear()
        record = mlm_training.run(p, texts, out, "fp", "x: 1\n", record_name="pretrain.json")
        return record, weights(out / "model.safetensors")

    host, host_weights = pretrain(tmp_path / "host")
    assert len(reads) == 17 and any(checks)   # 16 steps and the end; the 2D mask checked per forward
    monkeypatch.setattr(mlm_training, "device_loop", lambda device: True)
    monkeypatch.setattr(mlm_training, "SYNC_STEPS", 3)
    device, device_weights = pretrain(tmp_path / "device")
    assert len(reads) == 8 and not any(checks)   # steps 3, 6, 8 (the epoch's checkpoint), 9, 12, 15, 16, the end
    assert device["final_loss"] == pytest.approx(host["final_loss"], abs=1e-5)
    for name, value in host_weights.items():
        torch.testing.assert_close(device_weights[name], value, atol=1e-5, rtol=1e-4)


def test_substitute_is_seeded_and_changes_about_rate_of_the_words(tiny_bert):
    texts = [" ".join(np.random.default_rng(i).choice(WORDS, 20)) + "." for i in range(12)]
    out = mlm.substitute(texts, str(tiny_bert), 0.2, seed=5)
    assert out == mlm.substitute(texts, str(tiny_bert), 0.2, seed=5)
    assert out != mlm.substitute(texts, str(tiny_bert), 0.2, seed=6)
    for before, after in zip(texts, out):
        a, b = before.split(), after.split()
        assert len(a) == len(b) and a[-1][-1] == b[-1][-1] == "."
        assert sum(x != y for x, y in zip(a, b)) == 4   # round(0.2 * 20) words, each a new word
    assert mlm.substitute(texts, str(tiny_bert), 0.0, seed=5) == texts


def test_synonyms_without_wordnet_come_from_the_pretrained_masked_lm(exp, tiny_bert, monkeypatch):
    """augment.synonym with synonyms: auto and no WordNet corpus: the words are replaced by the
    pretrain stage's masked LM (pretrained:mlm), whose fingerprint the model then carries."""
    monkeypatch.setattr("pipeline.views.wordnet_available", lambda: False)
    lr = {"name": "lr", "kind": "tfidf_lr", "view": "lower", "augment": {"copies": 1, "synonym": 0.3}}
    configure(exp, tiny_bert, models=[lr], max_steps=2)
    cfg = load_config(exp.config)
    assert (cfg.models[0].augment.synonyms, cfg.models[0].augment.mlm_backbone) == ("mlm", "pretrained:mlm")
    for stage in ("preprocess", "folds", "pretrain", "train"):
        assert exp.run(stage) == 0, stage
    record = read_json(out_dir(exp) / "pretrain.json")
    assert read_json(exp.models / "lr" / "manifest.json")["config"]["pretrained"] == {
        "augment.mlm_backbone": record["fingerprint"]}
    configure(exp, tiny_bert, models=[lr], max_steps=3)
    with pytest.raises(PipelineError, match=r"model 'lr': params.augment.mlm_backbone=pretrained:mlm but .* other settings"):
        checked_models(load_config(exp.config), None, 0)


def test_augmented_words_replaced_by_the_masked_lm(exp, tiny_bert):
    """The masked LM really rewrites the augmented copies (a substitute of the pretrained folder)."""
    from pipeline.augment import transform
    from pipeline.config import AugmentConfig

    texts = list(tiny_pairs(12, 0).text_a)
    aug = AugmentConfig(copies=1, synonym=0.3, synonyms="mlm", mlm_backbone=str(tiny_bert))
    out = transform(texts, aug, np.random.default_rng(0))
    assert out != texts and [len(t.split()) for t in out] == [len(t.split()) for t in texts]
    assert out == transform(texts, aug, np.random.default_rng(0))   # seeded


def test_synonyms_mlm_without_a_masked_lm_is_one_line(exp):
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"][0]["augment"] = {"copies": 1, "synonym": 0.2, "synonyms": "mlm"}
    exp.write_config(cfg)
    with pytest.raises(PipelineError, match=r"augment.synonyms=mlm needs a masked LM"):
        load_config(exp.config)


def test_a_member_on_the_pretrained_backbone_is_served_as_predicted(exp, tiny_bert):
    """embed_lr on pretrained:mlm: the serving loader finds the pretrain stage's folder and
    predicts the ensemble's test matrix."""
    from pipeline import predictor
    from pipeline.views import table_of

    emb = {"name": "emb", "kind": "embed_lr", "view": "lower", "params": {"backbone": "pretrained:mlm", "max_length": 32}}
    configure(exp, tiny_bert, models=[emb], max_steps=2)
    for stage in ("preprocess", "folds", "pretrain", "train", "ensemble"):
        assert exp.run(stage) == 0, stage
    cfg = load_config(exp.config)
    ens = predictor.load_ensemble(cfg)
    _, test, _ = load_prepared(cfg)
    a, b = test.views["raw"]
    combined, _ = predictor.predict(ens, table_of("t", test.ids, a, b, ens.views))
    summary = read_json(exp.models / "ensembles" / "summary.json")
    expected = np.load(exp.models / "ensembles" / summary["submitted"] / "test.npy")
    assert np.abs(combined - expected).max() <= 1e-5


def test_checkpoint_keeps_each_gpus_rng_where_cuda_runs(tmp_path, monkeypatch):
    """The dropout masks of a CUDA run come from the GPUs' generators: a resumed run restores them
    (with a fake CUDA here: the states saved are the ones handed back on resume)."""
    from pipeline.models import mlm_training as mt

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    states = [torch.arange(4, dtype=torch.uint8), torch.arange(4, 8, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    mt.checkpoint(tmp_path, "fp", model, opt, sched, mt.Progress(3, 1.0, 0.5))
    assert mt.resume(tmp_path, "fp", model, opt, sched).step == 3
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(restored, states))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)   # another machine: left alone
    restored.clear()
    mt.resume(tmp_path, "fp", model, opt, sched)
    assert restored == []
