"""Pretrain stage: in-task masked-language-model pre-training of a backbone on the experiment's
train and test texts (never their labels), for models that name it `backbone: pretrained:<name>`.

    python -m pipeline.pretrain [config.yaml] [key=value ...] [--force]

Does nothing (one line) when the config has no `pretrain` section; a finished pretrain with the
same fingerprint is skipped; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional

from . import cli
from .backbones import pretrain
from .layout import pretrained_dir
from .prepared import load_prepared

log = logging.getLogger("pipeline.pretrain")


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="pretrain again from the start")
    args = p.parse_intermixed_args(argv)
    cfg = cli.load(args)
    if cfg.pretrain is None:
        print("pretrain: the config has no pretrain section; nothing to do")
        return 0
    train, test, _ = load_prepared(cfg)
    record = pretrain(cfg, train, test, force=args.force, progress=sys.stderr.isatty())
    if record is not None:
        log.info("pretrain %s: %d steps in %.1fs (%.1f sentences/s), final loss %.4f -> %s", cfg.pretrain.name,
                 record["steps"], record["train_seconds"], record["sentences_per_s"], record["final_loss"],
                 pretrained_dir(cfg, cfg.pretrain.name))
    return 0


if __name__ == "__main__":
    cli.run(main)
