"""Where the transformer trainer's time goes, on an MRPC slice (torch.profiler: CPU, and CUDA where present).

    python -m bench.profile_transformer [--rows 640] [--steps 10] [--top 15]

Trains one warm-up epoch on the first --rows pairs of train.tsv (same settings as
bench.mrpc_vs_hf: batch 32, max length 128, bf16 autocast where the CPU has it), then profiles
--steps training steps and one prediction pass over the test file. Prints, for each, the
top operators by self CPU time and the share of a few groups that bound the speed: matrix
products, attention, dropout masks, optimizer arithmetic and dtype casts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.mrpc_vs_hf import data_dir, load_mrpc, pair_table

# Operator name fragments per group; an operator counts in the first group it matches.
GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "attention kernel": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
    "dropout masks": ("bernoulli", "dropout"),
    "optimizer arithmetic": ("addcdiv", "lerp", "aten::sqrt", "aten::div", "_foreach"),
    "dtype casts / copies": ("aten::copy_", "aten::to", "aten::_to_copy"),
}


def group_shares(events) -> dict[str, float]:
    """{group: share of total self CPU time} over the profiler's key averages."""
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    shares = dict.fromkeys(GROUPS, 0.0)
    for e in events:
        for group, keys in GROUPS.items():
            if any(k in e.key for k in keys):
                shares[group] += e.self_cpu_time_total / total
                break
    return {g: round(s, 3) for g, s in shares.items()}


def report(title: str, prof, top: int) -> None:
    events = prof.key_averages()
    print(f"\n== {title}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=top))
    for group, share in group_shares(events).items():
        print(f"{group:>22}: {share:6.1%} of self CPU time")


def main(argv: list[str] | None = None) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from tqdm import tqdm

    from pipeline.data import Split
    from pipeline.models.base import FitContext
    from pipeline.models.params import TransformerParams
    from pipeline.models.tokens import train_steps
    from pipeline.models.optim import build_optim
    from pipeline.models.transformer import TransformerModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)

    (ta, tb, ty), (sa, sb, sy) = load_mrpc(data_dir(None), False)
    n = min(args.rows, len(ty))
    train = Split([(pair_table("train", ta[:n], tb[:n], ty[:n]), np.arange(n))], ty[:n])
    test = Split([(pair_table("test", sa, sb, sy), np.arange(len(sy)))], sy)
    p = TransformerParams(epochs=1, batch_size=32, max_length=128, lr=5e-5, save_checkpoint=False)
    model = TransformerModel(p, 2, "raw")
    ctx = FitContext(n_classes=2, seed=42, fold=0, out_dir=Path("/tmp/profile_transformer"), score=None,
                     label="profile", progress=False)
    model.fit(train, None, ctx)  # warm-up: loads the backbone, tokenises, first kernels
    # on a GPU the device's kernels too (the tables then sort by self CPU time all the same: the host
    # work per step is what a launch-bound small model waits on)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    print(f"threads {torch.get_num_threads()}, precision {model.precision_}, "
          f"attention {model.module_.backbone.config._attn_implementation}")

    enc = model._encode(train)
    y, w = model._targets(train)
    feed = model._feed(enc, y, w)
    steps = feed.plan(train_steps(enc.lengths, p.batch_size, p.grad_accum, np.random.default_rng(0))[: args.steps],
                      lambda m: p.batch_size)
    optim = build_optim(model.module_, p, len(steps), model.precision_, model.device_,
                        sparse=model.runtime_.sparse_embeddings)
    with profile(activities=activities) as prof, model.training_attention():
        model._train_epoch(steps, feed, w, optim, tqdm(disable=True), "profile")
    report(f"training, {len(steps)} steps of {p.batch_size}, mean length {enc.lengths.mean():.0f} tokens", prof,
           args.top)

    with profile(activities=activities) as prof:
        model.predict_proba(test)
    report(f"prediction, {len(sy)} test pairs", prof, args.top)


if __name__ == "__main__":
    main()
