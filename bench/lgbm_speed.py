"""TF-IDF + LightGBM settings on MRPC: seconds per fold against out-of-fold accuracy.

    python -m bench.lgbm_speed [VARIANT ...] [--seeds 42 7] [--table]

The base is configs/mrpc.yaml's `tfidf_lgbm` model (read from the config, never typed in here) on
its prepared data and folds (the preprocess and folds stages are run first when their outputs are
missing); each variant is a set of TfidfLGBMParams overrides on top of it. For each (variant, seed)
the kind is fitted on every fold's training rows exactly as the train stage does (fold k with seed
+ k) and predicts its held-out rows; nothing reads the test file. Reported per variant: the mean
seconds per fold of the whole fit (TF-IDF vocabulary and design matrix, LightGBM) and of LightGBM
alone, the ratio of the `before` variant's fold time to it, and the OOF accuracy at 0.5.

One JSON line per (variant, seed) is appended to bench/results/lgbm_speed.jsonl (a pair already
recorded with the same settings is skipped) and bench/results/lgbm_speed.md is rewritten from the
whole file. Times are comparable only with nothing else busy on the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.mrpc_vs_hf import ROOT, machine

RESULTS = ROOT / "bench" / "results"
CONFIG = ROOT / "configs" / "mrpc.yaml"
MODEL = "tfidf_lgbm"
# variant -> overrides of the config's params. `before`: the model as it trained before max_bin
# existed (LightGBM's 255 bins everywhere, 400 rounds at 0.04, 30% of the columns per tree)
BEFORE = {"max_bin": 255, "n_estimators": 400, "learning_rate": 0.04, "colsample_bytree": 0.3}
VARIANTS: dict[str, dict] = {
    "before": BEFORE,
    "bins15": {**BEFORE, "max_bin": 15},
    "bins7": {**BEFORE, "max_bin": 7},
    "bins3": {**BEFORE, "max_bin": 3},
    "bins7_cols15": {**BEFORE, "max_bin": 7, "colsample_bytree": 0.15},
    "bins7_cols15_270x.06": {"max_bin": 7, "colsample_bytree": 0.15, "n_estimators": 270, "learning_rate": 0.06},
    "bins7_200x.08": {**BEFORE, "max_bin": 7, "n_estimators": 200, "learning_rate": 0.08},
}


def experiment():
    """(cfg, train table, folds, the model's params as the config gives them)."""
    from pipeline.config import load_config, model_params
    from pipeline.errors import PipelineError
    from pipeline.fold_assignment import load_folds, write_folds
    from pipeline.prepared import load_prepared, write_prepared

    cfg = load_config(CONFIG, [])
    try:
        train, _, _ = load_prepared(cfg)
    except PipelineError:
        write_prepared(cfg)
        train, _, _ = load_prepared(cfg)
    try:
        folds, _ = load_folds(cfg, train)
    except PipelineError:
        write_folds(cfg)
        folds, _ = load_folds(cfg, train)
    model = next(m for m in cfg.models if m.name == MODEL)
    return cfg, model, train, folds, model_params(model)


def run(variant: str, seed: int, model_cfg, train, folds, params) -> dict:
    """Fit every fold with the variant's params; the record of one JSON line."""
    import dataclasses

    import numpy as np

    from pipeline import tasks
    from pipeline.data import Split
    from pipeline.models import registry
    from pipeline.models.base import FitContext

    p = dataclasses.replace(params, **VARIANTS[variant])
    oof = np.zeros(len(train))
    fold_s, booster_s = [], []
    for k in range(int(folds.max()) + 1):
        tr, va = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        model = registry.kind(MODEL).build(p, 2, model_cfg.view)
        ctx = FitContext(n_classes=2, seed=seed + k, fold=k, out_dir=None, score=lambda y, q: 0.0,
                         progress=False, task=tasks.CLASSIFICATION)
        model._estimator = _timed(model._estimator, booster_s)
        t0 = time.perf_counter()
        model.fit(Split([(train, tr)], train.y[tr]), Split([(train, va)], train.y[va]), ctx)
        oof[va] = model.predict_proba(Split([(train, va)], train.y[va]))[:, 1]
        fold_s.append(time.perf_counter() - t0)
    return {"variant": variant, "seed": seed, "params": dataclasses.asdict(p),
            "fold_seconds": round(statistics.mean(fold_s), 2), "booster_seconds": round(statistics.mean(booster_s), 2),
            "oof_accuracy": round(float(((oof > 0.5) == train.y).mean()), 4), "machine": machine()}


def _timed(make, seconds: list[float]):
    """make(seed) -> an estimator whose fit appends its seconds (LightGBM alone) to `seconds`."""
    def timed(seed):
        est = make(seed)
        fit = est.fit

        def fit_timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fit(*args, **kwargs)
            seconds.append(time.perf_counter() - t0)
            return out
        est.fit = fit_timed
        return est
    return timed


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def table(records: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["variant"], []).append(r)
    base = by.get("before", [])   # the ratio and gain columns need the before variant in the same file
    before = statistics.mean(r["fold_seconds"] for r in base) if base else 0.0
    base_acc = statistics.mean(r["oof_accuracy"] for r in base) if base else 0.0
    lines = ["| variant | settings | seeds | s per fold (LightGBM alone) | speed-up | OOF accuracy | gain |",
             "|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        s = statistics.mean(r["fold_seconds"] for r in rs)
        acc = statistics.mean(r["oof_accuracy"] for r in rs)
        keys = ("max_bin", "n_estimators", "learning_rate", "colsample_bytree")
        settings = ", ".join(f"{k} {rs[0]['params'][k]}" for k in keys)
        ratio, gain = ("", "") if "before" not in by else (f"{before / s:.2f}x", f"{100 * (acc - base_acc):+.1f} pt")
        lines.append(f"| {name} | {settings} | {len(rs)} | {s:.1f} ({statistics.mean(r['booster_seconds'] for r in rs):.1f})"
                     f" | {ratio} | {acc:.4f} | {gain} |")
    cpu = records[0]["machine"] if records else {}
    return "\n".join(lines) + f"\n\nMachine: {cpu.get('cpu')}, {cpu.get('cores')} cores.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", help=f"of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--name", default="lgbm_speed", help="results file stem under bench/results")
    ap.add_argument("--table", action="store_true", help="only rewrite the table from what is recorded")
    args = ap.parse_args()
    from pipeline.fileio import write_text

    path = RESULTS / f"{args.name}.jsonl"
    records = load(path)
    if not args.table:
        _, model_cfg, train, folds, params = experiment()
        for variant in args.variants or list(VARIANTS):
            for seed in args.seeds:
                import dataclasses

                settings = dataclasses.asdict(dataclasses.replace(params, **VARIANTS[variant]))
                if any(r["variant"] == variant and r["seed"] == seed and r["params"] == settings for r in records):
                    continue
                record = run(variant, seed, model_cfg, train, folds, params)
                print(json.dumps({k: v for k, v in record.items() if k not in ("params", "machine")}), flush=True)
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                records.append(record)
    write_text(RESULTS / f"{args.name}.md", table(records))
    print(table(records))


if __name__ == "__main__":
    main()
