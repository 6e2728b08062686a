"""Shared command-line plumbing for the stage scripts: config + overrides, one-line errors."""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from . import layout
from .config import ExperimentConfig, load_config
from .errors import PipelineError

DEFAULT_CONFIG = "configs/default.yaml"
# The running stage's resources (the experiment lock), released when `run` returns.
_STAGE: contextvars.ContextVar[Optional[contextlib.ExitStack]] = contextvars.ContextVar("stage", default=None)
log = logging.getLogger("pipeline")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. folds.n_splits=3")
    return p


def split_config_arg(args: argparse.Namespace) -> None:
    """`python -m pipeline.train folds.n_splits=3` means the default config plus an override."""
    if args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides.insert(0, args.config)
        args.config = DEFAULT_CONFIG


def load(args: argparse.Namespace) -> ExperimentConfig:
    """The stage's config, after the checks that must pass before anything is written: no output
    can land on an input, and no other process is writing this experiment (its lock is held until
    the stage ends, when run by `run`)."""
    split_config_arg(args)
    cfg = load_config(args.config, args.overrides)
    layout.check_layout(cfg, Path(args.config) if args.config else None)
    stack = _STAGE.get()
    if stack is not None:
        stack.enter_context(layout.experiment_lock(cfg))
    return cfg


def run(main: Callable[[Optional[list[str]]], int | None], argv: Optional[list[str]] = None) -> None:
    """Run a stage: bad input or a broken contract is one line on stderr and exit 2."""
    # Logs go to stdout; stderr holds only the one-line error (and progress bars).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    try:
        with contextlib.ExitStack() as stack:
            token = _STAGE.set(stack)
            try:
                code = main(argv)
            finally:
                _STAGE.reset(token)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # disk full, permissions, ... outside the atomic writers: still one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
