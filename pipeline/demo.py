"""Writes the embedded demos: three synthetic tasks on news-like sentences (pipeline/synthetic.py).

    python -m pipeline.demo [out_dir]     (default data/demo; deterministic, seed 0)

out_dir holds the classification demo (configs/default.yaml), out_dir + "_regression" and
out_dir + "_multilabel" the other two (configs/demo_regression.yaml, configs/demo_multilabel.yaml).
"""
from __future__ import annotations

import sys
from pathlib import Path

from .synthetic import write_demo, write_multilabel_demo, write_regression_demo

if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo")
    write_demo(root)
    write_regression_demo(root.with_name(root.name + "_regression"))
    write_multilabel_demo(root.with_name(root.name + "_multilabel"))
