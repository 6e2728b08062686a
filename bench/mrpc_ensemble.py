"""MRPC: the whole K-fold ensemble (configs/mrpc.yaml) against the single HF Trainer model.

    python -m bench.mrpc_ensemble [--config configs/mrpc.yaml] [--fresh] [--models a,b] [--name N]
                                  [key=value ...]

Runs every stage of run_all.sh in turn (finished models are reused unless --fresh), then writes
bench/results/mrpc_ensemble.{json,md}: each model's and each ensemble method's OOF and test
accuracy/F1, the HF baseline from bench/results/mrpc_vs_hf.json when it exists, each stage's wall
time in this invocation and each model's training time from its manifest (sum of its folds, so
it stays true when models were trained by an earlier, resumed run). --models trains and combines
only those models (a run in steps); --name writes bench/results/<name>.{json,md} instead.
On a machine with NVIDIA GPUs, nvidia-smi is sampled every half second while each stage runs and
the result holds each stage's GPU busy share (the mean utilisation) and peak memory.

One GPU machine (issue targets: the train stage of configs/mrpc.yaml, and configs/mrpc_gpu.yaml
end to end with its MPNet models):
    python -m bench.mrpc_ensemble --config configs/mrpc.yaml --fresh execution.backend=ray --name mrpc_one_gpu
    python -m bench.mrpc_ensemble --config configs/mrpc_gpu.yaml --fresh --name mrpc_gpu
(python -m bench.gpu_targets runs both and says which targets are met.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "folds", "train", "pseudo_label", "ensemble", "report")
RESULTS = ROOT / "bench" / "results"


class GpuSampler:
    """nvidia-smi's utilisation and memory of every GPU, every SAMPLE_MS, while the block runs;
    summary() -> {"busy_share": mean utilisation / 100 over GPUs and samples, "peak_memory_mb",
    "samples"}, or None without nvidia-smi."""
    SAMPLE_MS = 500

    def __enter__(self) -> "GpuSampler":
        exe = shutil.which("nvidia-smi")
        self.proc = None if exe is None else subprocess.Popen(
            [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", f"-lms={self.SAMPLE_MS}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        self.lines = []
        if self.proc is not None:
            self.proc.terminate()
            self.lines = self.proc.communicate(timeout=10)[0].splitlines()

    def summary(self) -> Optional[dict]:
        rows = [row for row in map(_numbers, self.lines) if row is not None]
        util = [u for u, _ in rows if u is not None]
        mem = [m for _, m in rows if m is not None]
        if not rows:
            return None
        return {"busy_share": round(sum(util) / len(util) / 100, 3) if util else None,
                "peak_memory_mb": max(mem) if mem else None, "samples": len(rows)}


def _numbers(line: str) -> Optional[tuple[Optional[float], Optional[float]]]:
    """(utilisation %, memory MB) of one nvidia-smi line, each None where nvidia-smi could not read
    it ("[N/A]": a MIG slice has no utilisation, a container may lack either); None for a line that
    is not two fields or has neither number."""
    fields = line.split(",")
    if len(fields) != 2:
        return None
    util, mem = (_number(f) for f in fields)
    return None if util is None and mem is None else (util, mem)


def _number(field: str) -> Optional[float]:
    try:
        return float(field)
    except ValueError:
        return None


def run_stages(config: str, overrides: list[str], fresh: bool, models: list[str] | None = None) -> tuple[dict, dict]:
    """({stage: wall seconds}, {stage: GpuSampler.summary()}); stops at the first stage that fails."""
    seconds, gpu = {}, {}
    for stage in STAGES:
        extra = ["--force"] if fresh and stage in ("train",) else []
        extra += ["--models", ",".join(models)] if models and stage == "train" else []
        t0 = time.perf_counter()
        with GpuSampler() as sampler:
            r = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", config, *overrides, *extra], cwd=ROOT)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        gpu[stage] = sampler.summary()
        if r.returncode != 0:
            raise SystemExit(f"stage {stage} failed (exit {r.returncode})")
    return seconds, gpu


def model_rows(models_dir: Path, summary: dict) -> list[dict]:
    rows = []
    for name, s in summary["models"].items():
        manifest = json.loads((models_dir / name / "manifest.json").read_text())
        info = manifest.get("fold_info", [{}])
        speeds = [f["samples_per_s"] for f in info if f.get("samples_per_s")]
        rows.append({"name": name, "kind": manifest["kind"], **_scores(s["oof"], s.get("test")),
                     "train_seconds": round(manifest["timings"]["total_seconds"], 1),
                     "train_samples_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None})
    return rows


def seed_rows(cfg, models_dir: Path) -> list[dict]:
    """One row per seed of each seed-bag model: that seed's folds alone (fold<k>/seed<s>/), as
    if the model had been trained with `seed: s`, so the bag's gain over its seeds shows."""
    import numpy as np

    from pipeline.fileio import read_npy
    from pipeline.fold_assignment import load_folds
    from pipeline.prepared import load_prepared
    from pipeline.tasks import get as get_task

    train, test, _ = load_prepared(cfg)
    folds, _ = load_folds(cfg, train)
    task, rows = get_task(cfg.task), []
    for m in cfg.models:
        manifest_path = models_dir / m.name / "manifest.json"
        seeds = json.loads(manifest_path.read_text()).get("seeds") if manifest_path.is_file() else None
        for s in seeds or []:
            dirs = [models_dir / m.name / f"fold{k}" / f"seed{s}" for k in range(int(folds.max()) + 1)]
            val = [read_npy(d / "val_pred.npy") for d in dirs]
            oof = np.zeros((len(train), val[0].shape[1]), np.float32)
            for k, v in enumerate(val):
                oof[folds == k] = v
            test_pred = np.mean([read_npy(d / "test_pred.npy") for d in dirs], axis=0)
            rows.append({"name": f"{m.name} seed {s} alone", "kind": m.kind,
                         **_scores(task.scores(train.y, oof), None if test.y is None else task.scores(test.y, test_pred))})
    return rows


def method_rows(summary: dict) -> list[dict]:
    """One row per ensemble method; the submitted one says so in its name and its `submitted`."""
    rows = []
    for m, s in summary["methods"].items():
        name = f"[{m}] t={s.get('threshold')}" if s.get("threshold") is not None else f"[{m}]"
        submitted = m == summary.get("submitted")
        rows.append({"name": name + (" (submitted)" if submitted else ""), "submitted": submitted,
                     **_scores(s.get("oof_scores_thresholded") or s["oof_scores"], s.get("test"))})
    return rows


def machine() -> dict:
    """Where the run ran: CPU cores, torch, and its GPUs' names (none on a CPU machine)."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "gpus": gpus}


def _scores(oof: dict, test: dict | None) -> dict:
    test = test or {}
    return {"oof_accuracy": _r(oof.get("accuracy")), "oof_f1": _r(oof.get("f1")),
            "test_accuracy": _r(test.get("accuracy")), "test_f1": _r(test.get("f1"))}


def _r(x):
    return None if x is None else round(float(x), 4)


def hf_baseline(test_file: str) -> dict | None:
    """bench.mrpc_vs_hf's Trainer row, where this run's test file is the one it scored."""
    from bench.mrpc_vs_hf import TEST_FILE

    path = RESULTS / "mrpc_vs_hf.json"
    if test_file != TEST_FILE or not path.is_file():
        return None
    hf = json.loads(path.read_text()).get("hf")
    return None if hf is None else {"name": "HF Trainer (single model, bench.mrpc_vs_hf)", "oof_accuracy": None,
                                    "oof_f1": None, "test_accuracy": hf["test_accuracy"], "test_f1": hf["test_f1"]}


def markdown(result: dict) -> str:
    cols = ("oof_accuracy", "oof_f1", "test_accuracy", "test_f1")
    fmt = lambda v: "" if v is None else f"{v:.4f}"
    plain = lambda v: "" if v is None else str(v)
    lines = ["| model / method | OOF acc | OOF F1 | test acc | test F1 | train s | train samples/s |",
             "|---|---|---|---|---|---|---|"]
    for row in result["models"] + result["methods"] + ([result["hf"]] if result["hf"] else []):
        lines.append("| " + " | ".join([row["name"], *(fmt(row[c]) for c in cols),
                                         plain(row.get("train_seconds")), plain(row.get("train_samples_per_s"))]) + " |")
    lines += ["", "| stage | wall s (this invocation) | GPU busy share | GPU peak MB |", "|---|---|---|---|"]
    gpu = result.get("stage_gpu") or {}
    share = lambda v: "" if v is None else f"{v:.0%}"  # noqa: E731
    mb = lambda v: "" if v is None else f"{v:.0f}"  # noqa: E731
    lines += [f"| {k} | {v} | " + (f"{share(gpu[k]['busy_share'])} | {mb(gpu[k]['peak_memory_mb'])} |"
                                   if gpu.get(k) else " | |") for k, v in result["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mrpc.yaml")
    ap.add_argument("--fresh", action="store_true", help="retrain every model (--force)")
    ap.add_argument("--models", help="comma-separated: train and combine only these models")
    ap.add_argument("--name", default="mrpc_ensemble", help="results file stem under bench/results")
    args, overrides = ap.parse_known_args()
    models = args.models.split(",") if args.models else None
    overrides += [f"ensemble.models=[{','.join(models)}]"] if models else []
    stage_seconds, stage_gpu = run_stages(args.config, overrides, args.fresh, models)
    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_config
    from pipeline.fileio import write_json, write_text
    from pipeline.layout import models_dir as models_root

    cfg = load_config(ROOT / args.config, overrides)
    models_dir = ROOT / models_root(cfg)  # an absolute models path stays as it is
    summary = json.loads((models_dir / "ensembles" / "summary.json").read_text())
    result = {"config": args.config, "stage_seconds": stage_seconds, "stage_gpu": stage_gpu, "models": model_rows(models_dir, summary) + seed_rows(cfg, models_dir),
              "methods": method_rows(summary), "hf": hf_baseline(cfg.data.test), "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{args.name}.json", result)
    table = markdown(result)
    write_text(RESULTS / f"{args.name}.md", table)
    print(table)


if __name__ == "__main__":
    main()
