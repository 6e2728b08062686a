"""Report stage: scores per model and fold, model correlation, the ensemble's confusion matrix,
calibration and the pseudo-label rounds, as a Markdown page with PNG plots.

    python -m pipeline.report [config.yaml] [key=value ...]

Writes reports/<exp>/report.md, report.json (the page's numbers), config.yaml and fold_scores.png,
correlation.png, confusion.png, reliability.png, pseudo_rounds.png (when pseudo-labelling ran).
The models are ensemble.round's (ensemble.models, default all); the ensemble is ensemble.submit's
output under models/<exp>/.../ensembles/. Every number is recomputed from the .npy matrices, the
labels and folds.csv after the manifests were checked; none is read from a log.
"""
from __future__ import annotations

from typing import Optional

from . import cli
from .diagnostics import write_report


def main(argv: Optional[list[str]] = None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg = cli.load(args)
    page = write_report(cfg)
    print(f"report: {page} (+ plots in {page.parent})")
    return 0


if __name__ == "__main__":
    cli.run(main)
