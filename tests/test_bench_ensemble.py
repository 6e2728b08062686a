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


def test_unreadable_fields_are_left_out_not_fatal():
    """nvidia-smi prints [N/A] for what it cannot read (a MIG slice: utilisation, on every line):
    the readable fields still count, and a crash here would end the run after its first stage."""
    s = sampled(["[N/A], 1000", "80, [N/A]", "", "garbage", "40, 2048"]).summary()
    assert s == {"busy_share": 0.6, "peak_memory_mb": 2048.0, "samples": 3}
    mig = sampled(["[N/A], 1000", "[N/A], 3000"]).summary()
    assert mig == {"busy_share": None, "peak_memory_mb": 3000.0, "samples": 2}
    assert sampled(["[N/A], [N/A]", "x"]).summary() is None


def test_the_stage_table_shows_what_was_read():
    from bench.mrpc_ensemble import markdown

    result = {"models": [], "methods": [], "hf": None, "stage_seconds": {"train": 12.5, "report": 1.0},
              "stage_gpu": {"train": {"busy_share": None, "peak_memory_mb": 3000.0, "samples": 2}, "report": None}}
    text = markdown(result)
    assert "| train | 12.5 |  | 3000 |" in text and "| report | 1.0 |  | |" in text


def test_gpu_targets_read_each_run_and_say_where_it_ran():
    """bench.gpu_targets: the train stage of one run, the whole wall time and the submitted
    method's test accuracy of the other; a missing run leaves its targets unmeasured."""
    from bench.gpu_targets import markdown, tabulate
    from bench.mrpc_ensemble import method_rows

    summary = {"submitted": "stack", "methods": {
        "blend": {"threshold": 0.5, "oof_scores": {"accuracy": 0.84}, "test": {"accuracy": 0.86}},
        "stack": {"oof_scores": {"accuracy": 0.85}, "test": {"accuracy": 0.8504}}}}
    methods = method_rows(summary)
    assert [m["submitted"] for m in methods] == [False, True] and methods[1]["name"] == "[stack] (submitted)"
    h200 = {"gpus": ["NVIDIA H200"], "cpu_cores": 16}
    gpu_run = {"stage_seconds": {"train": 400.0, "ensemble": 100.5}, "methods": methods, "machine": h200}
    rows = tabulate({"mrpc_one_gpu": None, "mrpc_gpu": gpu_run})
    assert [(r["measured"], r["met"]) for r in rows] == [(None, None), (500.5, False), (0.8504, True)]
    text = markdown(rows)
    assert "| not measured |" in text and "| 500.5 | no | NVIDIA H200, 16 CPU cores |" in text
    fast = tabulate({"mrpc_one_gpu": {"stage_seconds": {"train": 150.0}, "machine": h200}, "mrpc_gpu": None})
    assert fast[0]["met"] is True and fast[2]["met"] is None
