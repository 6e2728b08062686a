"""How many of the tokens a transformer epoch computes are padding: what packed or unpadded batches
could save at most, and what compile's rounded widths cost.

    python -m bench.padding [--mrpc DIR] [--minilm PATH] [--batch-sizes 8,32] [--name padding]

MRPC train.tsv pairs tokenised as the trainer tokenises them (MiniLM's WordPiece, max_length 128),
5 epochs of the trainer's own batches (tokens.train_steps: length-sorted inside shuffled chunks),
each batch padded as the trainer pads it (tokens.batch_width: its longest row rounded up to
PAD_MULTIPLE), or to the next of tokens.BUCKETS (length_buckets, which compile turns on), or in rows drawn at random
(what a plain DataLoader with dynamic padding pads). Device-independent: counts, not timings.
Writes bench/results/<name>.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EPOCHS = 5
MAX_LENGTH = 128


def shares(lengths: np.ndarray, batch_size: int, seed: int = 1) -> dict:
    """Real tokens / computed tokens over EPOCHS epochs of batch_size rows, for each way of padding."""
    from pipeline.models.tokens import batch_width, train_steps

    real = trainer = buckets = 0
    shuffled = 0
    for epoch in range(EPOCHS):
        rng = np.random.default_rng([seed, epoch])
        for step in train_steps(lengths, batch_size, 1, rng):
            for rows in step:
                longest = int(lengths[rows].max())
                real += int(lengths[rows].sum())
                trainer += batch_width(longest, MAX_LENGTH) * len(rows)
                buckets += batch_width(longest, MAX_LENGTH, buckets=True) * len(rows)
        perm = rng.permutation(len(lengths))
        shuffled += sum(int(lengths[perm[i:i + batch_size]].max()) * len(perm[i:i + batch_size])
                        for i in range(0, len(perm), batch_size))
    return {"trainer": real / trainer, "length_buckets": real / buckets, "random_rows": real / shuffled}


def main(argv=None) -> None:
    from bench.gpu import minilm_path
    from bench.mrpc_vs_hf import data_dir, load_mrpc
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mrpc")
    ap.add_argument("--minilm")
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--name", default="padding")
    args = ap.parse_args(argv)
    (a, b, _), _ = load_mrpc(data_dir(args.mrpc), False)
    tok = AutoTokenizer.from_pretrained(minilm_path(args.minilm))
    lengths = np.array([len(x) for x in tok(a, b, truncation=True, max_length=MAX_LENGTH)["input_ids"]])
    lines = [f"MRPC train.tsv, {len(lengths)} pairs, MiniLM WordPiece: mean {lengths.mean():.1f} tokens, "
             f"max {lengths.max()}; {EPOCHS} epochs of batches. Share of the computed tokens that are real "
             "(1 - padding):", "",
             "| batch | trainer's batches | + widths rounded to BUCKETS (compile) | rows at random (plain DataLoader) |",
             "|---|---|---|---|"]
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        s = shares(lengths, bs)
        lines.append(f"| {bs} | {s['trainer']:.3f} | {s['length_buckets']:.3f} | {s['random_rows']:.3f} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{args.name}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
