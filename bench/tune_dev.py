"""Choose transformer settings on MRPC dev.tsv, never on the test file.

    python -m bench.tune_dev '{"lr": 1e-4, "epochs": 5}' '{"lr": 5e-5, "head": "cls"}' ...

Each JSON object overrides TransformerParams (base: the embedded MiniLM, batch 32, max length
128); each setting trains on all of train.tsv and scores dev.tsv after every epoch (the best
epoch's weights are kept, as in the pipeline). Prints one JSON line per setting and appends it
to bench/results/tune_dev.jsonl.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.mrpc_vs_hf import ROOT, data_dir, load_mrpc, pair_table


def run(overrides: dict) -> dict:
    from pipeline.data import whole
    from pipeline.metrics import score
    from pipeline.models.base import FitContext
    from pipeline.models.params import TransformerParams
    from pipeline.models.transformer import TransformerModel

    (ta, tb, ty), (da, db, dy) = load_mrpc(data_dir(None), False, test="dev.tsv")
    base = {"max_length": 128, "batch_size": 32, "patience": 0, "save_checkpoint": False}
    params = {k: v for k, v in overrides.items() if k != "seed"}  # the seed is the fit's, not a param
    p = TransformerParams(**{**base, **params})
    ctx = FitContext(n_classes=2, seed=overrides.get("seed", 42), fold=0, out_dir=Path("/tmp/tune_dev"),
                     score=lambda y, pr: score("accuracy", y, pr), label="tune")
    t0 = time.perf_counter()
    model = TransformerModel(p, 2, "raw").fit(whole(pair_table("train", ta, tb, ty)),
                                               whole(pair_table("dev", da, db, dy)), ctx)
    info = model.info_
    return {"overrides": overrides, "dev_accuracy_per_epoch": info["epoch_scores"], "best_epoch": info["best_epoch"],
            "samples_per_s": info["samples_per_s"], "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    out = ROOT / "bench" / "results" / "tune_dev.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for arg in sys.argv[1:]:
        result = run(json.loads(arg))
        print(json.dumps(result), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
