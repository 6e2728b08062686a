"""Small-data fine-tuning levers on MRPC, judged against seed noise.

    python -m bench.levers [LEVER ...] [--seeds 1 2 3] [--data DIR] [--epochs N] [--rows N]
    python -m bench.levers --table            (rewrite the summary from what is recorded)

Each lever is a set of TransformerParams overrides on top of the base recipe, which is read from
configs/mrpc.yaml's `minilm_cls` model (never typed in here). For each (lever, seed) MiniLM is
fine-tuned on all of train.tsv and scores dev.tsv after every epoch (patience 0, so the curve is
complete); nothing reads the test file. Reported per lever, over seeds:

  kept   dev accuracy (argmax) at the epoch the pipeline's rule keeps: the recipe's patience 1 on
         its criterion (`tuned`: accuracy at the threshold tuned on the validation rows), applied
         to the recorded curve; dev stands in for a fold's validation rows, so it is optimistic,
         equally for every lever (with swa_epochs the average is kept where it validated best)
  p0     the same with patience 0: the epoch of the best criterion over all epochs
  last   dev accuracy after the last epoch (no selection at all)
  best   the best epoch's dev accuracy (an oracle: selected on dev itself)
  time   training + validation seconds of the fastest run, and its ratio to the base recipe's

A lever is worth keeping only where its mean gain exceeds the base recipe's spread (max - min
over the same seeds). One JSON line per (lever, seed) is appended to bench/results/levers.jsonl
(a pair already recorded with the same overrides and recipe is skipped: the bench resumes), and
bench/results/levers.md is rewritten from the whole file. Runs happen one at a time, in this
process, so their times are comparable only with nothing else busy on the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.mrpc_vs_hf import ROOT, data_dir, load_mrpc, machine, pair_table
from pipeline.models.params import SIZE_RECIPES

RESULTS = ROOT / "bench" / "results"
RECIPE_MODEL = "minilm_cls"
RECIPE_PATIENCE = 1  # the recipe's early stopping (configs/mrpc.yaml), applied to the recorded curve
# lever name -> TransformerParams overrides on top of the recipe
LEVERS: dict[str, dict] = {
    "base": {},
    "reinit1": {"reinit_layers": 1},
    "reinit2": {"reinit_layers": 2},
    "ema": {"ema": 0.99},
    "swa": {"swa_epochs": 3},
    "fgm": {"adversarial": "fgm"},
    "fgm_eps1": {"adversarial": "fgm", "adv_eps": 1.0},
    "awp": {"adversarial": "awp", "adv_eps": 0.01, "adv_start_epoch": 2},
    "rdrop": {"rdrop": 1.0},
    # the 12-layer MPNet at the recipe's learning rate for its width (LR_BY_WIDTH: 0.3 x MiniLM's)
    "mpnet": {"backbone": "all-mpnet-base-v2", "lr": 3e-5},
}
# the trainer's recipes by data size (models.params.SIZE_RECIPES), as levers on the base recipe
LEVERS.update({f"recipe_{name}": dict(values) for _, name, values in SIZE_RECIPES})
# the small recipe with the medium recipe's re-initialised top layer (is reinit worth it below 2,000 rows?)
LEVERS["recipe_small_reinit1"] = {**LEVERS["recipe_small"], "reinit_layers": 1}


def recipe() -> dict:
    """The params of configs/mrpc.yaml's RECIPE_MODEL, with nothing that stops early (patience 0)
    or writes checkpoints: every epoch is scored on dev."""
    from pipeline.yamlio import load_yaml, read_config_text

    path = ROOT / "configs" / "mrpc.yaml"
    cfg = load_yaml(read_config_text(path), str(path))
    model = next(m for m in cfg["models"] if m["name"] == RECIPE_MODEL)
    # patience 0 with the recipe's criterion: every epoch runs and its criterion is recorded
    return {**model["params"], "patience": 0, "early_stop": "tuned", "save_checkpoint": False}


def kept_epoch(scores: list[float], patience: int) -> int:
    """The 1-based epoch early stopping with `patience` keeps on this curve (0: never stops), by the
    rule of the trainer's Best: the first of equal scores, stop after `patience` epochs without gain."""
    best, bad = 0, 0
    for i in range(1, len(scores)):
        if scores[i] > scores[best]:
            best, bad = i, 0
        else:
            bad += 1
            if patience and bad >= patience:
                break
    return best + 1


def shortened(overrides: dict, epochs: int | None) -> dict:
    """The lever's overrides for a run of `epochs` epochs (its epoch counts cut to fit)."""
    if epochs is None:
        return overrides
    out = {**overrides, "epochs": epochs}
    for key in ("swa_epochs", "adv_start_epoch"):
        if key in out:
            out[key] = min(out[key], epochs)
    return out


def run(lever: str, overrides: dict, seed: int, directory: Path, rows: int | None) -> dict:
    from pipeline.data import whole
    from pipeline.metrics import score
    from pipeline.models.base import FitContext
    from pipeline.models.params import TransformerParams
    from pipeline.models.transformer import TransformerModel

    (ta, tb, ty), (da, db, dy) = load_mrpc(directory, False, test="dev.tsv")
    if rows:
        ta, tb, ty = ta[:rows], tb[:rows], ty[:rows]
    base = recipe()
    # every epoch runs (patience 0); a lever's own patience is applied to the recorded curve
    params = TransformerParams(**{**base, **overrides, "patience": 0})
    ctx = FitContext(n_classes=2, seed=seed, fold=0, out_dir=Path("/tmp/bench_levers"), metric="accuracy",
                     score=lambda y, pr: score("accuracy", y, pr), label=f"{lever} seed {seed}")
    t0 = time.perf_counter()
    model = TransformerModel(params, 2, "raw").fit(whole(pair_table("train", ta, tb, ty)),
                                                   whole(pair_table("dev", da, db, dy)), ctx)
    seconds = time.perf_counter() - t0
    info = model.info_
    curve, criterion = info["epoch_scores"], info["epoch_criterion"]
    if "swa_score" in info:   # the average comes after the last epoch, as one more candidate
        curve, criterion = curve + [info["swa_score"]], criterion + [info["swa_criterion"]]
    kept = kept_epoch(criterion, overrides.get("patience", RECIPE_PATIENCE))
    return {"lever": lever, "seed": seed, "overrides": overrides, "recipe": base, "rows": len(ty),
            "dev_per_epoch": curve, "criterion_per_epoch": criterion, "kept_epoch": kept,
            "kept": curve[kept - 1], "last": curve[-1], "best": max(curve),
            "seconds": round(seconds, 1),
            "samples_per_s": info["samples_per_s"]}




def p0(r: dict) -> float:
    """Dev accuracy at the epoch of the best criterion over every epoch (the first of equals)."""
    crit = r["criterion_per_epoch"]
    return r["dev_per_epoch"][crit.index(max(crit))]


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summary(rows: list[dict], timed: list[dict] = ()) -> str:
    """The markdown table: per lever, mean and spread of kept/last dev accuracy and time. timed:
    base runs made with nothing else busy, whose mean time the ratios divide by (else the base's)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["lever"], []).append(r)
    base_runs = [r for r in timed if r["lever"] == "base"] or by.get("base", [])
    # the fastest run of each: another process on the machine only ever adds time
    base_time = min(r["seconds"] for r in base_runs) if base_runs else None
    base_spread = None
    if "base" in by:
        kept = [r["kept"] for r in by["base"]]
        base_spread = max(kept) - min(kept)
    lines = ["| lever | overrides | seeds | kept dev acc mean | spread | p0 mean | spread | last mean | spread | "
             "gain vs base (kept / p0 / last) | s / run (fastest) | x base |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    columns = {"kept": lambda r: r["kept"], "p0": p0, "last": lambda r: r["last"]}
    base_means = {c: statistics.mean(f(r) for r in by["base"]) for c, f in columns.items()} if "base" in by else None
    for lever, rs in by.items():
        values = {c: [f(r) for r in rs] for c, f in columns.items()}
        secs = min(r["seconds"] for r in rs)
        gain = "" if base_means is None else " / ".join(
            f"{100 * (statistics.mean(values[c]) - base_means[c]):+.2f}" for c in columns) + " pt"
        cells = " | ".join(f"{statistics.mean(v):.4f} | {max(v) - min(v):.4f}" for v in values.values())
        lines.append(f"| {lever} | `{json.dumps(rs[0]['overrides'])}` | {', '.join(str(r['seed']) for r in rs)} | "
                     f"{cells} | {gain} | {secs:.0f} | {'' if base_time is None else f'{secs / base_time:.2f}'} |")
    head = [f"# MRPC dev: small-data levers over seeds ({RECIPE_MODEL} of configs/mrpc.yaml as the base recipe)", "",
            f"Recipe: `{json.dumps(rows[0]['recipe'])}` on {rows[0]['rows']} train.tsv pairs, scored on dev.tsv "
            f"every epoch. kept = the epoch the recipe's patience ({RECIPE_PATIENCE}, or the lever's) keeps; last = the final epoch.",
            f"Base spread (kept, max - min over seeds): {base_spread if base_spread is None else f'{base_spread:.4f}'}. "
            f"x base: against {base_time if base_time is None else f'{base_time:.0f}'} s a base run"
            + (" (a separate run with nothing else busy)." if timed else "."),
            f"Machine: {json.dumps(machine())}", "", "Reproduce: `python -m bench.levers " + " ".join(by) + "`", ""]
    return "\n".join(head + lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("levers", nargs="*", default=list(LEVERS), help=f"of {', '.join(LEVERS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--data", default=None)
    ap.add_argument("--rows", type=int, default=None, help="train on the first N pairs only (a quick look)")
    ap.add_argument("--epochs", type=int, default=None, help="train N epochs instead (a cost measurement)")
    ap.add_argument("--name", default="levers", help="results file stem under bench/results")
    ap.add_argument("--table", action="store_true", help="only rewrite the summary")
    ap.add_argument("--time-base", default=None, help="results stem of quiet base runs the time ratios divide by")
    args = ap.parse_args()
    jsonl, md = RESULTS / f"{args.name}.jsonl", RESULTS / f"{args.name}.md"
    unknown = [lv for lv in args.levers if lv not in LEVERS]
    if unknown:
        raise SystemExit(f"bench.levers: unknown lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    timed = recorded(RESULTS / f"{args.time_base}.jsonl") if args.time_base else []
    base_recipe = recipe()
    if not args.table:
        for lever in args.levers:
            for seed in args.seeds:
                done = recorded(jsonl)
                overrides = shortened(LEVERS[lever], args.epochs)
                if any(r["lever"] == lever and r["seed"] == seed and r["overrides"] == overrides
                       and r["recipe"] == base_recipe and r["rows"] == (args.rows or r["rows"]) for r in done):
                    continue
                result = run(lever, overrides, seed, data_dir(args.data), args.rows)
                print(json.dumps(result), flush=True)
                with open(jsonl, "a") as f:
                    f.write(json.dumps(result) + "\n")
                md.write_text(summary(recorded(jsonl), timed))
    rows = recorded(jsonl)
    if rows:
        md.write_text(summary(rows, timed))
        print(md.read_text())


if __name__ == "__main__":
    main()
