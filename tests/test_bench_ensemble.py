"""bench.mrpc_ensemble's GPU sampler: nvidia-smi lines -> each stage's busy share and peak memory."""
from __future__ import annotations

from bench.mrpc_ensemble import GpuSampler


def sampled(lines: list[str]) -> GpuSampler:
    s = GpuSampler()
    s.lines = lines
    return s


def test_busy_share_and_peak_over_every_gpu_and_sample():
    s = sampled(["50, 1000", "100, 3000", "0, 2000", "30, 500"]).summary()
    assert s == {"busy_share": 0.45, "peak_memory_mb": 3000.0, "samples": 4}


def test_unreadable_lines_are_skipped_not_fatal():
    """A MIG slice or a container prints [N/A] for what it cannot read: the stage's summary keeps
    the readable samples (a crash here would end the run after its first stage)."""
    s = sampled(["[N/A], 1000", "80, [N/A]", "", "garbage", "40, 2048"]).summary()
    assert s == {"busy_share": 0.4, "peak_memory_mb": 2048.0, "samples": 1}
    assert sampled(["[N/A], [N/A]"]).summary() is None
