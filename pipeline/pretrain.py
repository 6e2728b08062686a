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

from . import cli, pretraining
from .errors import PipelineError
from .store import load_prepared, pretrain_current, pretrain_fingerprint, pretrain_texts, pretrained_dir

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
    texts = pretrain_texts(cfg, train, test)
    if not texts:
        raise PipelineError(f"pretrain: no text in view {cfg.pretrain.view!r} of the prepared train and test files")
    fingerprint = pretrain_fingerprint(cfg, train, test)
    out = pretrained_dir(cfg, cfg.pretrain.name)
    if not args.force and pretrain_current(out, fingerprint):
        log.info("pretrain %s: up to date in %s, skipped (--force pretrains again)", cfg.pretrain.name, out)
        return 0
    if args.force:
        pretraining.drop_checkpoint(out)
    record = pretraining.run(cfg.pretrain, texts, out, fingerprint, cli.resolved_yaml(cfg),
                             progress=sys.stderr.isatty())
    log.info("pretrain %s: %d steps in %.1fs (%.1f sentences/s), final loss %.4f -> %s", cfg.pretrain.name,
             record["steps"], record["train_seconds"], record["sentences_per_s"], record["final_loss"], out)
    return 0


if __name__ == "__main__":
    cli.run(main)
