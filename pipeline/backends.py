"""The execution backends by name: who runs the driver's jobs (`execution.backend`).

Each entry is "module:Class" of an executor, imported only when a run picks it (Ray loads only for
`ray`). Config validates `execution.backend` against this table, so a third backend is one module
plus one line here.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

BACKENDS: dict[str, str] = {
    "local": "pipeline.executor:LocalExecutor",   # one job after another in this process
    "ray": "pipeline.ray_backend:RayExecutor",    # Ray tasks on a local instance or a cluster
}


def executor_class(name: str) -> type:
    """The executor class of backend `name` (a name config has validated)."""
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


# the package a backend needs beyond the core requirements, by backend name
PACKAGES: dict[str, str] = {"ray": "ray"}


def needs(name: str) -> str:
    """The line that names the package backend `name` needs and how to install it."""
    return f"execution.backend={name} needs the {PACKAGES[name]} package (pip install -r requirements.txt)"


def missing(name: str) -> Optional[str]:
    """needs(name) where backend `name`'s package is not installed here (looked up, not imported),
    else None."""
    package = PACKAGES.get(name)
    return None if package is None or importlib.util.find_spec(package) is not None else needs(name)
