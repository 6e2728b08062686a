"""Pseudo-label stage: label confident test rows with the teachers' votes, fold by fold, and retrain.

    python -m pipeline.pseudo_label [config.yaml] [key=value ...] [--force]

Round N (1..pseudo.rounds) takes its teachers' matrices from round N-1 (round 0 is the train
stage). For fold k only fold k's teacher predictions on the test set (test_folds[k]) vote, never
the fold average: fold k's teachers never saw fold k's validation rows, so the student's OOF score
stays honest. The chosen rows are added to fold k's training part only, never to its validation
(pseudo.soft: once per class, weighted by the teachers' mean probability of it).

Writes data/<exp>/pseudo/r<N>.csv (one row per pseudo label, with provenance), r<N>.json (rules,
counts per fold and class, the csv's sha256) and the students' matrices under
models/<exp>/rounds/r<N>/. Rerunning skips students whose fingerprint (pseudo labels included) is
unchanged. `ensemble.round=N` combines a round's students.
"""
from __future__ import annotations

from typing import Optional

from . import cli
from .layout import round_paths
from .rounds import counts_table, overview_table, rounds_overview, run_pseudo


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="retrain the students even if finished outputs match")
    args = p.parse_intermixed_args(argv)
    cfg = cli.load(args)
    if not cfg.pseudo.enabled:
        print("pseudo-label: disabled (set pseudo.enabled=true to run it); nothing to do")
        return 0
    infos = run_pseudo(cfg, force=args.force)
    classes = list(infos[0]["counts"]["fold0"])
    for info in infos:
        acc = info["label_accuracy"]
        print(f"round {info['round']}: {info['n_rows']} pseudo labels from teachers {info['teachers']} "
              f"(round {info['teacher_round']})" + (f", {acc:.4f} of them correct" if acc is not None else "")
              + f" -> {round_paths(cfg, info['round'])[0]}")
        print(counts_table(info, classes))
    print(f"\nstudents before (round 0) and after pseudo labelling, and their ensemble ({cfg.ensemble.submit}; "
          "honest OOF; classes at argmax)")
    print(overview_table(rounds_overview(cfg, cfg.pseudo.rounds), cfg.metric))
    return 0


if __name__ == "__main__":
    cli.run(main)
