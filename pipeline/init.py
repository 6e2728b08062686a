"""Init: a first experiment config from the competition's files.

    python -m pipeline.init TRAIN TEST [--sample-submission FILE] [--name NAME] [--out PATH]
                            [--id COL] [--text COL[,COL]] [--label COL[,COL...]] [--task T] [--metric M]
                            [--header | --no-header] [--encoding E] [--gpus N]
    python -m pipeline.init --config-reference      (docs/config.md: every config key, from the code)

Reads both files (any format the pipeline reads), proposes the id, text and label columns, the task
and its metric, the folds and a model line-up sized to this machine, prints what it chose and why,
and writes a commented config (default configs/<name>.yaml, never over an existing file) that
`bash run_all.sh` runs as it is. Where the files leave a choice open, one line `error: ...` names
the flag that settles it (exit 2). Run it from the project folder, as every stage.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from . import backends, cli
from .config_writer import check, render, write_new
from .errors import PipelineError
from .lineup import MIN_GPU_MEMORY_GB, backbone_problem, execution, lineup
from .machine import detect
from .names import METHODS, check_experiment_name
from .proposal import Hints, propose
from .reference import config_reference
from .tasks import TASKS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train", nargs="?", help="the labelled train file")
    p.add_argument("test", nargs="?", help="the test file to predict")
    p.add_argument("--sample-submission", metavar="FILE", help="the competition's sample submission")
    p.add_argument("--name", help="experiment name (default: the train file's folder)")
    p.add_argument("--out", metavar="PATH", help="where to write the config (default: configs/<name>.yaml)")
    p.add_argument("--id", metavar="COL", help="the test file's id column")
    p.add_argument("--text", metavar="COL[,COL]", help="the text column, or two for a pair task")
    p.add_argument("--label", metavar="COL[,COL...]", help="the label column (several 0/1 columns: multilabel)")
    p.add_argument("--task", choices=list(TASKS))
    p.add_argument("--metric")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the files have a header row (default: decided from the files)")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--gpus", type=int, metavar="N", help="size the models for N GPUs instead of this machine's")
    p.add_argument("--config-reference", action="store_true", help="print docs/config.md and exit")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.config_reference:
        sys.stdout.write(config_reference())
        return 0
    if not args.train or not args.test:
        raise PipelineError("give the train and the test file: python -m pipeline.init TRAIN TEST")
    train, test = Path(args.train), Path(args.test)
    sample = Path(args.sample_submission) if args.sample_submission else None
    name = experiment_name(args.name, train)
    out = Path(args.out) if args.out else Path("configs") / f"{name}.yaml"
    check_free(name, out)
    proposal = propose(train, test, sample, hints(args))
    machine = detect() if args.gpus is None else replace(detect(), gpus=args.gpus, gpu_name="",
                                                          gpu_memory_gb=MIN_GPU_MEMORY_GB)
    models = lineup(proposal, machine, backbone_problem)
    settings = execution(machine, backends.missing("ray"))
    text = render(proposal, name, models, machine.describe(), command(argv), out, settings)
    check(text)
    write_new(out, text)
    report(proposal, models, machine.describe(), out)
    return 0


def hints(args: argparse.Namespace) -> Hints:
    split = (lambda s: [c for c in s.split(",") if c.strip()] if s else None)
    return Hints(id=args.id, text=split(args.text), label=split(args.label), task=args.task, metric=args.metric,
                 header=args.header, encoding=args.encoding)


def experiment_name(given: Optional[str], train: Path) -> str:
    """--name, else the train file's folder name as an identifier."""
    name = given or re.sub(r"[^A-Za-z0-9_-]+", "_", train.resolve().parent.name).strip("_-") or "exp"
    check_experiment_name("--name" if given else f"the experiment name {name!r} (from the folder; --name)", name)
    if any(name.endswith("_" + m) for m in METHODS):
        raise PipelineError(f"experiment name {name!r} ends in _<method>; pass another --name")
    return name


def check_free(name: str, out: Path) -> None:
    """Never over an existing file, nor an experiment another config in configs/ runs (their
    outputs would mix)."""
    if out.exists():
        raise PipelineError(f"{out} exists; init never overwrites a file: pass --name or --out")
    taken = [p for p in sorted(Path("configs").glob("*.yaml")) if _experiment_of(p) == name]
    if taken:
        raise PipelineError(f"experiment {name!r} is {taken[0]}'s already (the two would share outputs): "
                            "pass --name NAME")


def _experiment_of(path: Path) -> Optional[str]:
    import yaml

    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return tree.get("experiment", "demo") if isinstance(tree, dict) else None


def command(argv: Optional[list[str]]) -> str:
    words = sys.argv[1:] if argv is None else argv
    return "python -m pipeline.init " + " ".join(shlex.quote(w) for w in words)


def report(p, models, machine: str, out: Path) -> None:
    """What init chose and why, a line a topic, then the command that runs the config."""
    for topic in ("files", "id", "text", "label", "task", "metric", "folds", "empty"):
        if topic in p.notes:
            print(f"{topic + ':':8}{p.notes[topic]}")
    on = ", ".join(m.model["name"] + (f" ({m.estimate})" if m.estimate else "") for m in models if not m.off)
    off = "; ".join(f"{m.model['name']} ({m.comment.split('left out: ', 1)[-1]})" for m in models if m.off)
    print(f"{'models:':8}{on}; for this machine: {machine}" + (f"; left out: {off}" if off else ""))
    print(f"wrote {out}; run it with:  bash run_all.sh {out}")


if __name__ == "__main__":
    cli.run(main)
