"""The commented config `pipeline.init` writes: what it chose, each with the reason as a comment.

The text is checked before it is written: it loads as a config (every key, type and range), and
both input files read through its data section as the preprocess stage reads them (empty texts,
duplicate ids, missing columns). It is written atomically, never over an existing file.
"""
from __future__ import annotations

import logging
import os
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import ExperimentConfig, load_config
from .data import read_raw
from .errors import PipelineError
from .fileio import create_text
from .lineup import ExecutionLine, ModelLine
from .names import METHODS
from .proposal import Proposal

WIDTH = 100


def render(p: Proposal, name: str, models: list[ModelLine], machine: str, command: str, path: Path,
           execution: Optional[ExecutionLine] = None) -> str:
    """The config's text (to be written at `path`): top level, data, folds, models, execution
    (where the machine wants other than the default), ensemble, and pseudo-labelling (off)."""
    out = [f"# {name}: written by `{command}`.",
           f"# Run it: bash run_all.sh {path}  ->  submissions/{name}.csv",
           "# Why each value: the comment above it. Every key: docs/config.md.",
           f"experiment: {name}"]
    out += _key("task", p.task, p.notes["task"]) + _key("metric", p.metric, p.notes["metric"]) + ["seed: 42", "data:"]
    out += _comment(p.notes["files"], "  ") + data_lines(p)
    out += ["folds:"] + _key("n_splits", p.n_splits, p.notes["folds"], "  ") + [f"  strategy: {p.strategy}"]
    out += _comment(f"models for this machine ({machine}); docs/models.md has every kind and setting") + ["models:"]
    for line in models:
        out += model_lines(line)
    if execution is not None:
        out += _comment(execution.comment) + ["execution:"]
        for key, value in execution.settings.items():
            out += _key(key, value, None, "  ")
    out += ensemble_lines(p) + pseudo_lines()
    return "\n".join(out) + "\n"


def data_lines(p: Proposal) -> list[str]:
    notes = {"id": p.notes["id"], "test_id": p.notes["id"], "text_a": p.notes["text"], "label": p.notes["label"],
             "on_empty_text": p.notes.get("empty"),
             "test_label": "the test file is labelled: its labels score the test predictions, never train",
             "sample_submission": "the submission takes its columns, column order and id order"}
    out = []
    for key, value in p.data.items():
        out += _key(key, portable(value) if key == "dir" else value, notes.get(key), "  ")
    return out


def model_lines(line: ModelLine) -> list[str]:
    """One model as a list item (its params on one line, or a line each where that is too long),
    commented out when it is off."""
    body = []
    for i, (k, v) in enumerate(line.model.items()):
        text = ("  - " if i == 0 else "    ") + f"{k}: {_scalar(v)}"
        if isinstance(v, dict) and len(text) > WIDTH:
            text = f"    {k}:\n" + "\n".join(f"      {kk}: {_scalar(vv)}" for kk, vv in v.items())
        body += text.splitlines()
    return _comment(line.comment, "  ") + (["  # " + b[2:] for b in body] if line.off else body)


def ensemble_lines(p: Proposal) -> list[str]:
    out = ["ensemble:",
           f"  methods: [{', '.join(METHODS)}]   # every combiner; docs/ensembles.md says what each does",
           "  submit: auto        # submissions/<experiment>.csv: the method with the best honest OOF metric"]
    if p.submit_values == "probabilities":
        out.append("  submit_values: probabilities   # the sample submission has one column per class")
    return out


def pseudo_lines() -> list[str]:
    return _comment("Pseudo-labelling, off: with it, confident test rows join each fold's training and the "
                    "models that run on CPU are retrained on them (docs/ensembles.md). To turn it on:") + \
        ["# pseudo: {enabled: true, retrain: cpu}"]


def _key(key: str, value: Any, note: Optional[str], indent: str = "") -> list[str]:
    """`key: value`, below its note as a comment."""
    return _comment(note, indent) + [f"{indent}{key}: {_scalar(value)}"]


def _comment(text: Optional[str], indent: str = "") -> list[str]:
    if not text:
        return []
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}#   ",
                         break_on_hyphens=False, break_long_words=False)


def _scalar(value: Any) -> str:
    """A value as YAML in flow style, quoted where YAML needs it ('#1 String')."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).removesuffix("\n...\n").strip()


def portable(folder: str) -> str:
    """The data folder relative to the current folder (where stages run) when it lies below it or
    beside it (../shared/data/mrpc), else absolute."""
    rel = os.path.relpath(folder)
    return rel if not rel.startswith(os.path.join("..", "..")) else folder


# ----------------------------------------------------------------------------- checks and writing


def check(text: str) -> ExperimentConfig:
    """The text as a config, with both input files read through its data section (as preprocess
    reads them); any problem is the one line the pipeline would give later."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        cfg = load_config(path)
    data = replace(cfg.data, dir=str(Path(cfg.data.dir).resolve()))
    quiet = logging.getLogger("pipeline.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)   # what it would log (ids from row numbers) init has said already
    try:
        for which in ("train", "test"):
            read_raw(data, which, Path(data.dir))
    finally:
        quiet.setLevel(level)
    return cfg


def write_new(path: Path, text: str) -> Path:
    """Write the config, never over an existing file."""
    if path.exists():
        raise PipelineError(f"{path} exists; init never overwrites a file: pass --out or --name")
    return create_text(path, text)
