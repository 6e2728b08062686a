"""Executors: who runs the driver's (model, fold, seed) jobs (seed: one of a model's seed bag).

The driver hands an executor its work: the run (plain data), the jobs, the job function (a
module-level function, so a backend can send it to another process by reference), where each
job's files go, and `on_done`, which writes a finished job with the same atomic writers whichever
backend ran it. Backends are a table (backends.py): `local` here, `ray` in ray_backend.py.

`local` runs the jobs one after another in the driver's process, in plan order (the default).
"""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .config import ExecutionConfig

# job_fn(run, job, out_dir, threads=None) -> JobResult; job_dir(run, job) -> Path; on_done(job, result)
JobFn = Callable[..., Any]
JobDir = Callable[[Any, Any], Path]
OnDone = Callable[[Any, Any], None]


class LocalExecutor:
    """Jobs in plan order in this process; the model saves its files in the fold folder itself."""

    def __init__(self, cfg: Optional[ExecutionConfig] = None):
        self.cfg = cfg

    def run(self, run, jobs: list, job_fn: JobFn, job_dir: JobDir, on_done: OnDone) -> None:
        for job in jobs:
            result = job_fn(run, job, job_dir(run, job))
            result.record.update(node=socket.gethostname(), resources=None)
            on_done(job, result)


def uses_torch(params) -> bool:
    """Whether a model with these (typed) params runs a torch encoder (fine-tuned or frozen)."""
    return bool(getattr(params, "backbone", None) or getattr(params, "embed", None))


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """torch's threads = n for the job (frozen embeddings too), restored after; torch is imported
    only for the jobs that use it."""
    if n is None:
        yield
        return
    from .models.backbone import num_threads

    with num_threads(n):
        yield
