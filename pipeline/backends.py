"""The execution backends by name: who runs the driver's jobs (`execution.backend`).

Each entry is "module:Class" of an executor, imported only when a run picks it (Ray loads only for
`ray`). Config validates `execution.backend` against this table, so a third backend is one module
plus one line here.
"""
from __future__ import annotations

import importlib

BACKENDS: dict[str, str] = {
    "local": "pipeline.executor:LocalExecutor",   # one job after another in this process
    "ray": "pipeline.ray_backend:RayExecutor",    # Ray tasks on a local instance or a cluster
}


def executor_class(name: str) -> type:
    """The executor class of backend `name` (a name config has validated)."""
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)
