"""The Ray backend against a fake Ray (no cluster): which jobs start when, what a Ctrl-C cancels,
what a failed job stops, what a local instance is asked for. The real cluster is tests/test_ray.py."""
from __future__ import annotations

import os
from collections import namedtuple
from types import SimpleNamespace

import pytest

from pipeline.errors import PipelineError
from pipeline.ray_backend import Resources, _Scheduler

ray_exceptions = pytest.importorskip("ray.exceptions")

Model = namedtuple("Model", "name")
Job = namedtuple("Job", "model part")
CPU, GPU = Resources(1.0, 0.0, None), Resources(1.0, 0.5, None)


class Ref:
    """A job's object ref: what ray.get returns, or the error it raises."""

    def __init__(self, job, where, error=None):
        self.job, self.where, self.error = job, where, error

    def __repr__(self) -> str:
        return f"Ref({self.job.model.name} {self.job.part} on {self.where})"


class FakeRay:
    """Every job finishes in submission order; `interrupt_at` (the n-th wait, 1-based) raises
    KeyboardInterrupt there; jobs named in `failing` raise a RayError from ray.get; init records
    what a local start asked for."""
    exceptions = ray_exceptions

    def __init__(self, interrupt_at: int = 0, failing: tuple = ()):
        self.interrupt_at, self.failing = interrupt_at, set(failing)
        self.started, self.cancelled, self.killed, self.waits = [], [], [], 0
        self.inits: list[dict] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)

    def shutdown(self) -> None:
        pass

    def remote(self, **_options):
        return lambda fn: SimpleNamespace(options=lambda **_: SimpleNamespace(remote=self._task))

    def _task(self, payload, job, res, job_fn):
        return self._ref(job, "task")

    def _ref(self, job, where):
        self.started.append((job.model.name, where))
        error = ray_exceptions.RayError("boom") if job.model.name in self.failing else None
        return Ref(job, where, error)

    def slot(self, name):
        return SimpleNamespace(name=name, run=SimpleNamespace(
            remote=lambda payload, job, res, job_fn: self._ref(job, name)))

    def wait(self, refs, num_returns):
        self.waits += 1
        if self.waits == self.interrupt_at:
            raise KeyboardInterrupt
        return refs[:1], refs[1:]

    def get(self, ref):
        if ref.error is not None:
            raise ref.error
        return SimpleNamespace(record={"dispatch": {}})

    def cancel(self, ref, force):
        self.cancelled.append(ref.job.model.name)

    def kill(self, actor):
        self.killed.append(actor.name)


def scheduler(ray, jobs):
    done = []
    wanted = {j: (GPU if j.model.name.startswith("gpu") else CPU) for j in jobs}
    sched = _Scheduler(ray, 0, "payload", wanted, None, lambda job, result: done.append(job.model.name))
    return sched, done


def jobs_of(*names):
    return [Job(Model(n), "fold 1/5") for n in names]


def test_cpu_jobs_start_beside_busy_slots_and_wait_for_capacity():
    ray = FakeRay()
    jobs = jobs_of("gpu_a", "gpu_b", "cpu_a", "cpu_b", "cpu_c")
    sched, done = scheduler(ray, jobs)
    sched.run(jobs, capacity=2, on_slots=set(jobs[:2]), slots=[ray.slot("slot0")])
    # at first: one slot job on the one slot, then CPU jobs up to the capacity while it trains
    assert ray.started[:3] == [("gpu_a", "slot0"), ("cpu_a", "task"), ("cpu_b", "task")]
    assert sorted(ray.started) == sorted([("gpu_a", "slot0"), ("gpu_b", "slot0"), ("cpu_a", "task"),
                                          ("cpu_b", "task"), ("cpu_c", "task")])
    assert sorted(done) == sorted(j.model.name for j in jobs)


def test_ctrl_c_cancels_the_tasks_in_flight_kills_busy_slots_and_keeps_finished_jobs():
    ray = FakeRay(interrupt_at=2)
    jobs = jobs_of("gpu_a", "gpu_b", "cpu_a", "cpu_b", "cpu_c")
    sched, done = scheduler(ray, jobs)
    with pytest.raises(KeyboardInterrupt):
        sched.run(jobs, capacity=2, on_slots=set(jobs[:2]), slots=[ray.slot("slot0")])
    assert done == ["gpu_a"]                       # the job finished before Ctrl-C was written
    # in flight at Ctrl-C: two CPU tasks (capacity 2) and gpu_b on the slot gpu_a freed
    assert [name for name, _ in ray.started] == ["gpu_a", "cpu_a", "cpu_b", "gpu_b"]
    assert ray.cancelled == ["cpu_a", "cpu_b"]     # tasks cancelled ...
    assert ray.killed == ["slot0"]                 # ... a slot's job goes with its worker


def test_a_failed_job_stops_new_starts_and_the_jobs_in_flight_are_kept():
    ray = FakeRay(failing=("cpu_a",))
    jobs = jobs_of("cpu_a", "cpu_b", "cpu_c", "cpu_d")
    sched, done = scheduler(ray, jobs)
    with pytest.raises(PipelineError, match="model 'cpu_a' fold 1/5: RayError: boom"):
        sched.run(jobs, capacity=2)
    assert [name for name, _ in ray.started] == ["cpu_a", "cpu_b"]   # nothing started after it
    assert done == ["cpu_b"]                                         # the one in flight written
    assert ray.cancelled == [] and ray.killed == []


@pytest.mark.parametrize("gpus", [0, 2])
def test_local_instance_offers_the_gpus_torch_sees(monkeypatch, gpus):
    """Ray's own GPU probe can miss a container's GPU (every transformer job would then quietly
    train on the CPU): a local instance is told torch's count."""
    import torch

    from pipeline.config import ExecutionConfig
    from pipeline.ray_backend import RayExecutor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    fake = FakeRay()
    with RayExecutor(ExecutionConfig(backend="ray"))._connected(fake):
        pass
    assert [i["num_gpus"] for i in fake.inits] == [gpus]
    assert fake.inits[0]["num_cpus"] == os.cpu_count()
