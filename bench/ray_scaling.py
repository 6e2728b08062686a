"""Local against Ray on MRPC: wall time of the train stage, Ray's overhead per job, and the simulated
makespan on more workers.

    python -m bench.ray_scaling [--quick]

Trains tfidf_lr, pair_lgbm and one MiniLM (configs/mrpc.yaml's minilm_cls settings), 5 grouped
folds, twice from scratch into bench/results/ray_work/: with the local backend, then with the Ray
backend on a two-node Ray cluster on this machine (one CPU a node, loopback only). Ray's overhead
per job is the driver's round trip (submit to result in hand) less the job's own time on the
worker: scheduling and data transfer. The makespan on 1..16 workers is a simulation: the measured
per-fold times scheduled longest first onto the least-loaded worker, against the ideal
max(total / workers, longest job). --quick: 600 train rows, 2 MiniLM epochs.
Writes bench/results/ray_scaling.json and .md.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "ray_work"
WORKERS = (1, 2, 4, 8, 16)


def overrides(backend: str, address: str | None, quick: bool) -> list[str]:
    out = [f"paths.work={WORK}/data", f"paths.models={WORK}/models_{backend}", f"paths.submissions={WORK}/subs",
           f"paths.reports={WORK}/reports", "experiment=mrpc_ray", f"execution.backend={backend}",
           "models.pair_lgbm.params.embed=null", "models.pair_lgbm.params.n_jobs=1", "models.tfidf_lgbm.params.n_jobs=1",
           "ensemble.models=[tfidf_lr,pair_lgbm,minilm_cls]", "models.minilm_cls.params.num_threads=1"]
    if address:
        out.append(f"execution.address={address}")
    if quick:
        out += ["data.max_train_rows=600", "models.minilm_cls.params.epochs=2"]
    return out


def stage(name: str, args: list[str], extra: list[str] = ()) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", f"pipeline.{name}", "configs/mrpc.yaml", *args, *extra], cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed (exit {r.returncode})")
    return round(time.perf_counter() - t0, 1)


def fold_records(models_dir: Path) -> list[dict]:
    out = []
    for path in sorted(models_dir.glob("*/fold*/fold.json")):
        rec = json.loads(path.read_text())
        out.append({"model": path.parent.parent.name, "fold": rec["fold"], "seconds": rec["seconds"],
                    "node": rec.get("node"), "dispatch": rec.get("dispatch")})
    return out


def makespan(seconds: list[float], workers: int) -> float:
    """Longest-first list scheduling onto the least-loaded of `workers`."""
    load = [0.0] * workers
    for s in sorted(seconds, reverse=True):
        load[load.index(min(load))] += s
    return max(load)


def simulate(seconds: list[float]) -> list[dict]:
    total, longest = sum(seconds), max(seconds)
    rows = []
    for w in WORKERS:
        ideal = max(total / w, longest)
        span = makespan(seconds, w)
        rows.append({"workers": w, "makespan_s": round(span, 1), "ideal_s": round(ideal, 1),
                     "over_ideal": round(span / ideal - 1, 4)})
    return rows


def overhead(records: list[dict], transformer_fold_s: float) -> dict:
    ms = [1000 * (r["dispatch"]["round_trip_seconds"] - r["dispatch"]["job_seconds"]) for r in records if r["dispatch"]]
    return {"jobs": len(ms), "mean_ms": round(sum(ms) / len(ms), 1), "max_ms": round(max(ms), 1),
            "mean_share_of_transformer_fold": round(sum(ms) / len(ms) / 1000 / transformer_fold_s, 5)}


def start_cluster():
    from pipeline.ray_backend import loopback_only

    loopback_only()
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    return c


def markdown(result: dict) -> str:
    o = result["ray_overhead"]
    lines = [f"Machine: {result['machine']}. Data: MRPC train.tsv{' (first 600 rows)' if result['quick'] else ''}, "
             "5 grouped folds; tfidf_lr, pair_lgbm, minilm_cls (1 thread a job).", "",
             "| backend | train stage wall s |", "|---|---|",
             f"| local (one process) | {result['wall_seconds']['local']} |",
             f"| ray (two one-CPU nodes) | {result['wall_seconds']['ray']} |", "",
             f"Ray overhead per job: mean {o['mean_ms']} ms, max {o['max_ms']} ms over {o['jobs']} jobs; "
             f"{100 * o['mean_share_of_transformer_fold']:.3f}% of a transformer fold "
             f"({result['transformer_fold_seconds']} s).", "",
             "Simulated makespan (a simulation from the measured per-fold times, longest first):", "",
             "| workers | makespan s | ideal s | over ideal |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['makespan_s']} | {r['ideal_s']} | {100 * r['over_ideal']:.1f}% |"
              for r in result["simulated"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    base = overrides("local", None, args.quick)
    stage("preprocess", base)
    stage("folds", base)
    wall = {"local": stage("train", base, ["--models", "tfidf_lr,pair_lgbm,minilm_cls"])}
    cluster = start_cluster()
    try:
        wall["ray"] = stage("train", overrides("ray", cluster.address, args.quick),
                            ["--models", "tfidf_lr,pair_lgbm,minilm_cls"])
    finally:
        cluster.shutdown()
    local, ray_recs = fold_records(WORK / "models_local" / "mrpc_ray"), fold_records(WORK / "models_ray" / "mrpc_ray")
    tf = [r["seconds"] for r in local if r["model"] == "minilm_cls"]
    tf_fold = round(sum(tf) / len(tf), 1)
    result = {"machine": f"{platform.processor() or platform.machine()}, {_cpu()}", "quick": args.quick,
              "wall_seconds": wall, "transformer_fold_seconds": tf_fold,
              "ray_overhead": overhead(ray_recs, tf_fold), "nodes": sorted({r["node"] for r in ray_recs}),
              "fold_seconds_local": local, "simulated": simulate([r["seconds"] for r in local])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ray_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ray_scaling.md").write_text(markdown(result))
    print(markdown(result))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
