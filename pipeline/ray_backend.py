"""The `ray` backend: every device of a machine or cluster kept busy, longest expected jobs first,
on a local Ray instance or a running cluster.

CPU jobs (the classical kinds, and every kind where there is no GPU) run as Ray tasks with the
model's resources. GPU jobs (where the cluster has GPUs: a kind whose registry accelerator is "gpu",
and a classical model that embeds with a torch encoder) run on GPU slots: `execution.gpu_slots`
long-lived workers per GPU, each holding 1/gpu_slots of one GPU for the whole run, so its process,
CUDA context and the run's caches (tokenised tables, loaded encoders) serve job after job; CPU jobs
run beside them. A job saves the model's files in a temporary folder on its node and returns them as
bytes, so the nodes need no shared file system; the driver writes them (`on_done`) into the same
layout as a local run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from . import backends
from .config import ExecutionConfig, ModelConfig, model_params
from .errors import PipelineError, first_line
from .executor import JobDir, JobFn, OnDone, torch_threads, uses_torch
from .models import registry

log = logging.getLogger("pipeline.executor")
GIB = 1 << 30


@dataclass(frozen=True)
class Resources:
    """One job's request: CPUs, GPUs, memory in GiB (None: no reservation)."""
    num_cpus: float
    num_gpus: float
    memory_gb: Optional[float]

    def options(self) -> dict:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * GIB)
        return opts

    def fits(self, node: dict) -> bool:
        have = node.get("Resources", {})
        return (have.get("CPU", 0) >= self.num_cpus and have.get("GPU", 0) >= self.num_gpus
                and have.get("memory", 0) >= (self.memory_gb or 0) * GIB)


def resources_of(m: ModelConfig, cluster_has_gpus: bool, gpu_slots: int = 1,
                 most_cpus: Optional[float] = None) -> Resources:
    """The model's `resources`, with the kind's defaults (see default_cpus); a job that belongs on
    a GPU (on_gpu) takes one GPU slot (1/gpu_slots of a GPU) where the cluster has GPUs; others
    never ask for one.
    most_cpus: the most CPUs a node can give a job (beside the GPU slots); a default request is
    held to it (a request no node can ever meet would wait in Ray's queue forever), an explicit
    one is the user's and check_fits refuses it."""
    r = m.resources
    gpus = r.num_gpus if r.num_gpus is not None else (1.0 / gpu_slots if on_gpu(m) and cluster_has_gpus else 0.0)
    cpus = r.num_cpus
    if cpus is None:
        cpus = default_cpus(m, gpus > 0)
        cpus = max(1.0, min(cpus, most_cpus)) if most_cpus is not None else cpus
    return Resources(cpus, gpus, r.memory_gb)


def default_cpus(m: ModelConfig, gpu_job: bool) -> float:
    """The threads the model would use in a local run, so that by default a job computes the same
    numbers on a cluster (thread counts change floating-point sums): LightGBM's `n_jobs`, a torch
    model's `num_threads`, else torch's default thread count here; 1 for a job on a GPU and for
    single-threaded kinds."""
    params = model_params(m)
    if getattr(params, "n_jobs", None):
        return float(params.n_jobs)
    if getattr(params, "num_threads", None):
        return float(params.num_threads)
    if uses_torch(params) and not gpu_job:
        import torch

        return float(torch.get_num_threads())
    return 1.0


def loopback_only() -> None:
    """Keep every Ray process this machine starts on 127.0.0.1 (set before ray is imported)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _ray():
    loopback_only()
    try:
        import ray
    except ImportError:
        raise PipelineError(backends.needs("ray")) from None
    return ray


def worker_env() -> dict[str, str]:
    """What a worker needs from this process: the package on its path (a local cluster; a remote
    one needs the project installed on its nodes) and the test fault points, if any."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_TEST_")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return env


class RayExecutor:
    def __init__(self, cfg: ExecutionConfig):
        self.cfg = cfg

    def run(self, run, jobs: list, job_fn: JobFn, job_dir: JobDir, on_done: OnDone) -> None:
        ray = _ray()
        with self._connected(ray):
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            gpus = any(_has(n, "GPU") > 0 for n in nodes)
            on_slots = {job for job in jobs if gpus and slot_job(job.model)}
            wanted = {job: resources_of(job.model, gpus, self.cfg.gpu_slots) for job in on_slots}
            check_fits(wanted, nodes)
            layout = slot_layout(nodes, list(wanted.values()), self.cfg, len(on_slots) < len(jobs))
            free = beside_slots(nodes, layout, self.cfg.gpu_slots)
            cpu_wanted = {job: resources_of(job.model, gpus, self.cfg.gpu_slots, _most(free, "CPU"))
                          for job in jobs if job not in on_slots}
            check_fits(cpu_wanted, free, " beside the GPU slots" if layout else "")
            wanted.update(cpu_wanted)
            payload = ray.put(strip_cache(run))  # the tables go to the object store once
            order = sorted(jobs, key=lambda j: -j.expected_seconds)
            scheduler = _Scheduler(ray, self.cfg.max_retries, payload, wanted, job_fn, on_done)
            with _slots(ray, layout, self.cfg) as slots:
                scheduler.run(order, capacity(free, list(cpu_wanted.values())), on_slots, slots)

    @contextlib.contextmanager
    def _connected(self, ray) -> Iterator[None]:
        """Join the configured cluster (execution.address, else RAY_ADDRESS), or start a local
        instance on loopback; an instance this call started is shut down after."""
        address = self.cfg.address or os.environ.get("RAY_ADDRESS")
        env = {"env_vars": worker_env()}
        started = not ray.is_initialized()
        if started:
            try:
                if address:
                    ray.init(address=address, runtime_env=env, logging_level=logging.ERROR, log_to_driver=False)
                else:
                    ray.init(num_cpus=os.cpu_count(), num_gpus=local_gpus(), _node_ip_address="127.0.0.1",
                             include_dashboard=False, runtime_env=env, logging_level=logging.ERROR,
                             log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise PipelineError(f"execution: cannot reach Ray at {address or 'a new local instance'}: "
                                    f"{first_line(e)}") from None
        try:
            yield
        finally:
            if started:
                ray.shutdown()


def local_gpus() -> int:
    """The GPUs a local instance offers: torch's count here (CUDA_VISIBLE_DEVICES honoured; 0 on
    a CPU build of torch). Ray's own probe can miss a GPU inside a container, which would quietly
    run every transformer job as a CPU task, or offer one that a CPU build cannot use."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()   # NVML or the driver's count: no CUDA context in the driver


def strip_cache(run):
    """The run as plain data: a job never relies on the driver's in-process cache."""
    return dataclasses.replace(run, cache={})


def check_fits(wanted: dict[Any, Resources], nodes: list[dict], where: str = "") -> None:
    """One line before anything starts when some job's request fits no node of the cluster
    (`nodes` as the job will find them; `where` says so in the line)."""
    for job, res in wanted.items():
        if not any(res.fits(n) for n in nodes):
            have = "; ".join(f"{n.get('NodeManagerAddress', '?')}: {_brief(n)}" for n in nodes) or "no nodes"
            raise PipelineError(f"models.{job.model.name}.resources ({res.num_cpus:g} CPU, {res.num_gpus:g} GPU"
                                + (f", {res.memory_gb:g} GiB" if res.memory_gb else "")
                                + f") fit no node of the cluster{where} ({have})")


def _brief(node: dict) -> str:
    r = node.get("Resources", {})
    return f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU, {r.get('memory', 0) / GIB:.1f} GiB"


def capacity(nodes: list[dict], wanted: list[Resources]) -> int:
    """How many CPU tasks to keep in flight: as many as the cluster's CPUs hold of the smallest
    request (more would only queue inside Ray, where a failure could no longer stop them from
    starting)."""
    cpus = _total(nodes, "CPU")
    smallest = min((r.num_cpus for r in wanted if r.num_cpus > 0), default=1.0)
    return max(1, int(cpus // smallest))


# ----------------------------------------------------------------------------- GPU slots


def on_gpu(m: ModelConfig) -> bool:
    """Whether the model's jobs belong on a GPU where the cluster has one: a GPU kind, and any kind
    that runs a torch encoder (a classical model's frozen embeddings: seconds on a GPU, minutes on
    the few CPU threads a task gets)."""
    return registry.kind(m.kind).accelerator == "gpu" or uses_torch(model_params(m))


def slot_job(m: ModelConfig) -> bool:
    """A job for a GPU slot: one that belongs on a GPU, whose resources leave the GPU share to the
    pipeline."""
    return on_gpu(m) and m.resources.num_gpus is None


def _total(nodes: list[dict], resource: str) -> float:
    """The cluster's amount of `resource` (CPU, GPU) over its live nodes."""
    return sum(_has(n, resource) for n in nodes)


def _most(nodes: list[dict], resource: str) -> float:
    """The largest amount of `resource` one node has."""
    return max((_has(n, resource) for n in nodes), default=0.0)


@dataclass(frozen=True)
class SlotLayout:
    """The run's GPU slots: how many, and what each holds for the whole run."""
    count: int
    res: Resources


def slot_layout(nodes: list[dict], wanted: list[Resources], cfg: ExecutionConfig,
                cpu_jobs_too: bool) -> Optional[SlotLayout]:
    """None without slot jobs; else gpu_slots slots per GPU of the cluster, each holding the largest
    slot job's request, its CPUs cut (to a fraction where need be) so that every GPU node holds its
    slots and, when the CPU jobs have no other node, one CPU for them: a slot holds its CPUs for
    the whole run, so slots that took every CPU would leave the CPU jobs waiting forever. A job on a
    slot still runs with the threads it asked for."""
    if not wanted:
        return None
    res = max(wanted, key=lambda r: (r.num_cpus, r.memory_gb or 0))
    gpu_nodes = [n for n in nodes if _has(n, "GPU") > 0]
    spare = cpu_jobs_too and not any(_has(n, "CPU") > 0 for n in nodes if _has(n, "GPU") == 0)
    cpus = res.num_cpus
    for n in gpu_nodes:
        fits = (_has(n, "CPU") - (1 if spare else 0)) / max(1, _shares(n, cfg.gpu_slots))
        cpus = min(cpus, max(0.0, math.floor(fits * 100) / 100))   # Ray counts CPUs to 1e-4
    count = sum(_shares(n, cfg.gpu_slots) for n in gpu_nodes)
    return SlotLayout(max(1, count), dataclasses.replace(res, num_cpus=cpus))


def _has(node: dict, resource: str) -> float:
    return node.get("Resources", {}).get(resource, 0)


def _shares(node: dict, gpu_slots: int) -> int:
    """The slots (1/gpu_slots of a GPU each) a node's GPUs hold; a fractional GPU holds its part."""
    return int(_has(node, "GPU") * gpu_slots + 1e-9)


def beside_slots(nodes: list[dict], layout: Optional[SlotLayout], gpu_slots: int) -> list[dict]:
    """The nodes as CPU jobs find them while the slots live: a GPU node's CPUs and memory less
    those of the slots it may hold (its GPUs x gpu_slots, at most all of them: where Ray puts
    fewer slots than GPU shares is its choice, so every GPU node is assumed to hold its share)."""
    if layout is None:
        return nodes
    out = []
    for n in nodes:
        have = dict(n.get("Resources", {}))
        held = min(_shares(n, gpu_slots), layout.count)
        have["CPU"] = max(0.0, have.get("CPU", 0) - held * layout.res.num_cpus)
        have["memory"] = max(0.0, have.get("memory", 0) - held * (layout.res.memory_gb or 0) * GIB)
        out.append({**n, "Resources": have})
    return out


@contextlib.contextmanager
def _slots(ray, layout: Optional[SlotLayout], cfg: ExecutionConfig):
    """The run's GPU slot workers (none without slot jobs), killed when the run ends."""
    if layout is None:
        yield []
        return
    actor = ray.remote(_Slot).options(num_cpus=layout.res.num_cpus, num_gpus=1.0 / cfg.gpu_slots,
                                      max_restarts=cfg.max_retries, max_task_retries=cfg.max_retries)
    slots = [actor.remote(f"slot{i}") for i in range(layout.count)]
    try:
        yield slots
    finally:
        for slot in slots:
            ray.kill(slot)


class _Slot:
    """A GPU slot: a long-lived worker holding its share of one GPU. It keeps the run it was sent
    (deserialised once) and the run's cache across jobs: tokenised tables and loaded encoders are
    made once per slot, not once per job."""

    def __init__(self, name: str):
        self.name, self.jobs, self.runs = name, 0, {}

    def run(self, payload: list, job, res: Resources, job_fn: JobFn):
        """Run `job` as _remote_job does; payload: [the run's object ref] (a list, so Ray hands
        the ref itself and the slot deserialises each run once)."""
        import ray

        key = payload[0].hex()
        if key not in self.runs:
            self.runs = {key: ray.get(payload[0])}   # a new run (a pseudo-label round): the old cache goes
        run = self.runs[key]
        cached = len(run.cache)
        result = _remote_job(run, job, res, job_fn)
        result.record["slot"] = {"name": self.name, "job": self.jobs, "cache_entries_at_start": cached}
        self.jobs += 1
        return result


def _remote_job(run, job, res: Resources, job_fn: JobFn):
    """On a worker: fit the job in a temporary folder with `res.num_cpus` threads, return the
    saved files as bytes and name the node in the record."""
    import ray

    start = time.perf_counter()
    node = ray.get_runtime_context().get_node_id()
    threads = max(1, int(res.num_cpus))
    tmp = Path(tempfile.mkdtemp(prefix=f"pipeline-{job.model.name}-{job.part.replace(' ', '')}-"))
    try:
        try:
            with torch_threads(threads if uses_torch(model_params(job.model)) else None):
                result = job_fn(run, job, tmp, threads)
        except PipelineError as e:
            raise PipelineError(f"model {job.model.name!r} {job.part} failed on node {node}: {e}") from None
        except Exception as e:  # any error in the model's code: named, with where it ran
            raise PipelineError(f"model {job.model.name!r} {job.part} failed on node {node}: "
                                f"{type(e).__name__}: {first_line(e)}") from None
        result.files = {p.name: p.read_bytes() for p in sorted(tmp.iterdir()) if p.is_file()}
        result.record.update(node=node, resources={"num_cpus": res.num_cpus, "num_gpus": res.num_gpus,
                                                   "memory_gb": res.memory_gb, "threads": threads,
                                                   "gpu_ids": [str(g) for g in ray.get_gpu_ids()]},
                             dispatch={"job_seconds": round(time.perf_counter() - start, 4)})
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Scheduler:
    """Submits jobs in order as they fit (GPU slots, CPU capacity), hands each finished one to
    on_done at once (so a killed driver keeps every fold finished so far), stops submitting at the
    first failure and reports it once the jobs in flight are done, and cancels them on Ctrl-C."""

    def __init__(self, ray, max_retries: int, payload, wanted: dict, job_fn: JobFn, on_done: OnDone):
        self.ray, self.payload, self.wanted, self.on_done, self.job_fn = ray, payload, wanted, on_done, job_fn
        self.remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(_remote_job)
        self.max_retries = max_retries
        self.sent: dict = {}  # ref -> when it was submitted

    def run(self, order: list, capacity: int, on_slots: set = frozenset(), slots: list = ()) -> None:
        """Start jobs in `order` as they fit: a slot job when a GPU slot is free, a CPU job while
        fewer than `capacity` CPU tasks are in flight; so CPU jobs run while the slots are busy."""
        queue, flight, failure = list(order), {}, None
        free, busy = list(slots), {}
        bar = _progress(len(order))
        try:
            while queue or flight:
                while failure is None:
                    job = self._startable(queue, on_slots, bool(free), len(flight) - len(busy) < capacity)
                    if job is None:
                        break
                    queue.remove(job)
                    slot = free.pop(0) if job in on_slots else None
                    ref = self._start(job, slot)
                    if slot is not None:
                        busy[ref] = slot
                    flight[ref], self.sent[ref] = job, time.perf_counter()
                if not flight:
                    break
                done, _ = self.ray.wait(list(flight), num_returns=1)
                job = flight.pop(done[0])
                if done[0] in busy:
                    free.append(busy.pop(done[0]))
                error = self._finish(job, done[0])
                failure = failure or error
                bar.update(1)
        except KeyboardInterrupt:
            for ref in flight:
                if ref not in busy:
                    self.ray.cancel(ref, force=True)
            for slot in busy.values():
                self.ray.kill(slot)
            raise
        finally:
            bar.close()
        if failure is not None:
            raise PipelineError(failure)

    @staticmethod
    def _startable(queue: list, on_slots: set, slot_free: bool, cpu_free: bool):
        """The first job in order that can start now, or None."""
        return next((j for j in queue if (slot_free if j in on_slots else cpu_free)), None)

    def _start(self, job, slot):
        """Submit `job` to `slot` (a GPU slot worker) or, without one, as a Ray task."""
        res = self.wanted[job]
        if slot is not None:
            return slot.run.remote([self.payload], job, res, self.job_fn)
        return self.remote.options(**res.options()).remote(self.payload, job, res, self.job_fn)

    def _finish(self, job: Any, ref) -> Optional[str]:
        """Write a finished job; return the error line of a failed one."""
        from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

        try:
            result = self.ray.get(ref)
        except RayTaskError as e:
            cause = e.cause if isinstance(e.cause, PipelineError) else None
            return str(cause) if cause else f"model {job.model.name!r} {job.part} failed: {first_line(e)}"
        except (WorkerCrashedError, TaskCancelledError) as e:
            return (f"model {job.model.name!r} {job.part}: its worker died {self.max_retries + 1} times "
                    f"({type(e).__name__}); finished folds are kept, rerun to resume")
        except self.ray.exceptions.RayError as e:
            return f"model {job.model.name!r} {job.part}: {type(e).__name__}: {first_line(e)}"
        # The round trip less the job's own time is Ray's overhead: scheduling and data transfer.
        result.record["dispatch"]["round_trip_seconds"] = round(time.perf_counter() - self.sent.pop(ref), 4)
        self.on_done(job, result)
        return None


def _progress(total: int):
    """A bar over all jobs with an ETA, on stderr when it is a terminal (logs stay on stdout)."""
    from tqdm import tqdm

    return tqdm(total=total, desc="jobs", unit="job", disable=not sys.stderr.isatty(), file=sys.stderr)
