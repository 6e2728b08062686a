"""Train stage: every model of the config through the K-fold driver (pipeline/driver.py).

    python -m pipeline.train [config.yaml] [key=value ...] [--models a,b] [--force] [--dry-run]
"""
from __future__ import annotations

from typing import Optional

from . import cli
from .config import ExperimentConfig, ModelConfig
from .driver import open_run, train_models
from .errors import PipelineError
from .layout import models_dir



def select_models(cfg: ExperimentConfig, names: Optional[str]) -> list[ModelConfig]:
    if not names:
        return list(cfg.models)
    return [cfg.model(n.strip()) for n in names.split(",") if n.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated model names (default: all)")
    p.add_argument("--force", action="store_true", help="retrain even if finished outputs match")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = p.parse_intermixed_args(argv)
    cfg = cli.load(args)
    models = select_models(cfg, args.models)
    if not models:
        raise PipelineError("config: no models to train (the models list is empty)")
    run = open_run(cfg)
    if args.dry_run:
        for m in models:
            print(f"{m.name}: {m.kind} on view {m.view}, {run.n_splits} folds -> {models_dir(cfg) / m.name}")
        return 0
    train_models(run, models, force=args.force)
    return 0


if __name__ == "__main__":
    cli.run(main)
