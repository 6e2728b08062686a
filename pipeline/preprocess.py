"""Preprocess stage: read the raw files once, write every text view plus labels and ids.

    python -m pipeline.preprocess [config.yaml] [key=value ...]

Views: raw; lower (word-segmented where the text is Chinese, lowercased, whitespace collapsed);
lemma (lower, then lemmatised).
Outputs under data/<exp>/prepared/: train.jsonl, test.jsonl, meta.json, config.yaml.
"""
from __future__ import annotations

from typing import Optional

from . import cli
from .layout import prepared_dir
from .prepared import write_prepared


def main(argv: Optional[list[str]] = None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg = cli.load(args)
    meta = write_prepared(cfg)
    print(f"preprocess: {meta['n_train']} train, {meta['n_test']} test rows, task {meta['task']}, "
          f"{len(meta['classes'])} output columns ({meta['columns']}) {meta['classes']}, "
          f"lemmatiser {meta['lemmatizer']}, segmenter {meta['segmenter']} -> {prepared_dir(cfg)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
