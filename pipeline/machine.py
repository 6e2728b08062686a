"""What this machine offers a run: CPU cores, memory, GPUs. `pipeline.init` sizes the model
line-up it proposes by it. torch is imported only when asked (it takes a second or two)."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    cores: int
    memory_gb: float
    gpus: int = 0
    gpu_memory_gb: float = 0.0    # of the smallest GPU; 0 without one
    gpu_name: str = ""

    def describe(self) -> str:
        gpus = f"{self.gpus} x {self.gpu_name} ({self.gpu_memory_gb:.0f} GB)" if self.gpu_name else \
            f"{self.gpus} GPU" if self.gpus else "no GPU"
        return f"{self.cores} CPU cores, {self.memory_gb:.0f} GB memory, {gpus}"


def detect() -> Machine:
    """This machine: the cores this process may run on, physical memory, CUDA GPUs torch sees."""
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = psutil.virtual_memory().total / 2**30
    return Machine(cores, memory, *_cuda())


def _cuda() -> tuple[int, float, str]:
    """(GPUs, memory of the smallest in GB, its name) as torch sees them; (0, 0, '') without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0.0, ""
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    smallest = min(props, key=lambda p: p.total_memory)
    return len(props), smallest.total_memory / 2**30, smallest.name
