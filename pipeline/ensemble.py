"""Ensemble stage: stack, blend, vote, select (hill climbing) or rank-average the models' matrices
into submission CSVs.

    python -m pipeline.ensemble [config.yaml] [key=value ...]

Every method is an estimator over a list of (n, C) prediction matrices, chosen by the task
(pipeline/tasks.py), scored honestly: its OOF predictions come from fitting it on the other folds'
OOF rows (the same folds as the models), and a decision threshold (binary classes, per label, or
QWK cut-points) is tuned the same way. Writes models/<exp>/ensembles/<method>/{oof,test}.npy and
combiner.json (the fitted estimator's state and the tuned threshold, for serving),
models/<exp>/ensembles/summary.json and submissions/<exp>_<method>.csv (+ submissions/<exp>.csv).
"""
from __future__ import annotations

from typing import Optional

from . import cli
from .combination import run_ensemble, summary_table
from .layout import submission_path


def main(argv: Optional[list[str]] = None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg = cli.load(args)
    summary = run_ensemble(cfg)
    print(summary_table(summary, cfg.metric))
    for n, s in summary["methods"].items():
        if "weights" in s:
            print(f"{n} weights: {s['weights']}")
    how = " (best honest OOF " + cfg.metric + ")" if cfg.ensemble.submit == "auto" else ""
    print(f"submission: {submission_path(cfg)} ({summary['submitted']}{how}); ids: {summary['test_ids']}"
          + (" 0..n-1 (no id column in the test file; set data.test_id to use one)"
             if summary["test_ids"] == "row numbers" else ""))
    return 0


if __name__ == "__main__":
    cli.run(main)
