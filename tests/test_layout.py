"""The layout of the code: no stage script imports another stage script; what two stages share
lives in a library module (store, driver, ensembling, rounds, splits, ...)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

STAGES = {"preprocess", "folds", "pretrain", "train", "pseudo_label", "ensemble", "report", "inspect"}


def imported_pipeline_modules(path: Path) -> set[str]:
    """Every pipeline module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 1 and parts[0]:
                out.add(parts[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif parts[0] == "pipeline" and len(parts) > 1:
                out.add(parts[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return out


def test_no_stage_script_imports_another():
    offenders = {}
    for path in sorted((ROOT / "pipeline").glob("*.py")):
        found = imported_pipeline_modules(path) & STAGES - {path.stem}
        if found:
            offenders[path.name] = sorted(found)
    stage_importers = {k: v for k, v in offenders.items() if Path(k).stem in STAGES}
    assert stage_importers == {}, stage_importers
    assert offenders == {}, offenders  # library modules do not reach up into stage scripts either


def test_the_check_sees_an_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from .ensemble import run_ensemble\nfrom . import report\nimport pipeline.folds\n")
    assert imported_pipeline_modules(f) == {"ensemble", "report", "folds"}
