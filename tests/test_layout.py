"""The layout of the package: five layers, imports pointing down only, no cycles.

A module imports from its own layer or the layers below it, never above, and the import graph has
no cycle (counting imports inside functions and under TYPE_CHECKING: an import inside a function
may defer a heavy library, never point up). No module or test imports a stage script (tests run
stages through `cli.run`, as `python -m` does). No module takes another's private name. Nothing in
models/ imports config, and config imports nothing of models/ but the registry and the params.
A new module must be placed in LAYERS, so its place is a decision, not an accident.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import ROOT

LAYERS: dict[int, tuple[str, ...]] = {
    1: ("errors", "faults", "fileio", "yamlio", "formatting", "plots", "names", "readers", "synthetic", "machine"),
    2: ("data", "views", "metrics", "combiners", "tasks", "backends", "models.params", "models.registry"),
    3: ("config", "models.base", "models.tokens", "models.heads", "models.dropout", "models.optim", "models.stability",
        "models.packaged", "models.backbone", "models.runtime", "models.sdpa", "models.transformer", "models.mlm",
        "models.mlm_training", "models.encoder",
        "models.classical", "models.embed", "models.features"),
    4: ("layout", "prepared", "fold_assignment", "artifacts", "pseudo_labels", "backbones", "provenance",
        "augment", "combination", "submission", "executor", "ray_backend", "driver", "rounds", "predictor",
        "http_app", "diagnostics", "proposal", "lineup", "config_writer", "reference"),
    5: ("cli", "preprocess", "folds", "pretrain", "train", "pseudo_label", "ensemble", "report", "serve",
        "inspect_models", "demo", "init"),
}
STAGES = set(LAYERS[5]) - {"cli"}
LAYER = {m: n for n, mods in LAYERS.items() for m in mods}


def modules(root: Path = ROOT / "pipeline") -> dict[str, Path]:
    """{dotted name under pipeline: file} of every module of the package (no __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if path.stem != "__init__":
            out[".".join(path.relative_to(root).with_suffix("").parts)] = path
    return out


def _target(node: ast.ImportFrom, here: str, known: set[str]) -> list[str]:
    """The package modules an `from ... import ...` names (a module, or names of one)."""
    if node.level:
        base = here.split(".")[: len(here.split(".")) - node.level]
        parts = base + (node.module.split(".") if node.module else [])
    elif (node.module or "").split(".")[0] == "pipeline":
        parts = node.module.split(".")[1:]
    else:
        return []
    hits = [".".join(parts + [a.name]) for a in node.names if ".".join(parts + [a.name]) in known]
    return hits or ([".".join(parts)] if ".".join(parts) in known else [])


def imports(path: Path, here: str, known: set[str]) -> dict[str, list[str]]:
    """{imported package module: [names taken from it]}, at module level, in functions, anywhere."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            for t in _target(node, here, known):
                names = [] if any(t.endswith("." + a.name) or t == a.name for a in node.names) \
                    else [a.name for a in node.names]
                out.setdefault(t, []).extend(names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("pipeline.") and a.name[len("pipeline."):] in known:
                    out.setdefault(a.name[len("pipeline."):], [])
    return out


def graph() -> dict[str, dict[str, list[str]]]:
    mods = modules()
    return {m: imports(p, m, set(mods)) for m, p in mods.items()}


def cycle(g: dict[str, dict]) -> list[str]:
    """One import cycle of the graph, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for t in g.get(m, {}):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def longest_chain(g: dict[str, dict]) -> list[str]:
    """The longest import chain (the graph is acyclic)."""
    memo: dict[str, list[str]] = {}

    def walk(m: str) -> list[str]:
        if m not in memo:
            memo[m] = [m] + max((walk(t) for t in g[m]), key=len, default=[])
        return memo[m]

    return max((walk(m) for m in g), key=len)


def test_every_module_has_a_layer():
    assert sorted(set(modules()) - set(LAYER)) == []
    assert sorted(set(LAYER) - set(modules())) == []


def test_imports_point_down_and_never_in_a_circle():
    g = graph()
    upward = {f"{m} (L{LAYER[m]}) -> {t} (L{LAYER[t]})" for m, ts in g.items() for t in ts if LAYER[t] > LAYER[m]}
    assert sorted(upward) == []
    assert cycle(g) == []


def test_no_stage_script_is_imported():
    g = graph()
    assert sorted(f"{m} -> {t}" for m, ts in g.items() for t in ts if t in STAGES) == []
    known = set(modules()) | STAGES | {"inspect"}   # a stage that is gone is still found
    for path in sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py")):
        found = set(imports(path, "tests.x", known)) & STAGES
        assert not found, f"{path.name} imports stage scripts {sorted(found)}"


def test_no_private_name_crosses_a_module():
    g = graph()
    taken = sorted(f"{m} takes {t}.{n}" for m, ts in g.items() for t, names in ts.items()
                   for n in names if n.startswith("_"))
    assert taken == []


def test_models_and_config_stay_apart():
    g = graph()
    assert sorted(m for m in g if m.startswith("models.") and "config" in g[m]) == []
    assert sorted(t for t in g["config"] if t.startswith("models.")) == ["models.params", "models.registry"] or \
        set(t for t in g["config"] if t.startswith("models.")) <= {"models.params", "models.registry"}


def test_no_module_is_named_after_the_standard_library():
    assert sorted(m for m in modules() if m.split(".")[-1] in sys.stdlib_module_names) == []


def test_the_checks_see_what_they_must(tmp_path):
    """The graph finds function-local, TYPE_CHECKING and relative imports, and a cycle."""
    root = tmp_path / "pkg"
    (root / "models").mkdir(parents=True)
    (root / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n")
    (root / "b.py").write_text("def f():\n    from .models import c\n")
    (root / "models" / "c.py").write_text("from ..a import _hidden\nimport pipeline.b\n")
    mods = modules(root)
    g = {m: imports(p, m, set(mods)) for m, p in mods.items()}
    assert g == {"a": {"b": ["X"]}, "b": {"models.c": []}, "models.c": {"a": ["_hidden"], "b": []}}
    assert cycle(g) in (["a", "b", "models.c", "a"], ["b", "models.c", "a", "b"], ["models.c", "a", "b", "models.c"])


def test_the_readme_imports_what_exists():
    """Every `from pipeline... import ...` the README and docs/ show names a module and names that exist."""
    import importlib
    import re

    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    found = [(page.name, *m) for page in pages
             for m in re.findall(r"^from (pipeline[\w.]*) import ([\w, ]+)$", page.read_text(), flags=re.M)]
    assert found
    for page, module, names in found:
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"{page}: {module} has no {name}"
