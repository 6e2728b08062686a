"""bench/gpu.py runs end to end in its smoke mode: tiny random models and data on the CPU, every
workload, system and lever, in seconds (on a GPU the same script measures the real workloads)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_bench_smoke_run(tmp_path):
    out = tmp_path / "gpu_smoke.json"
    r = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--inline", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] and res["gemm"]["gemm_bf16_tflops"] > 0 and res["mfu_peak_source"] == "measured bf16 GEMM"
    systems = {"mrpc": {"hf", "hf_tuned", "ours", "ours_compiled", "ours_cuda_graphs", "ours_compiled_fine"},
               "bert_base": {"hf", "hf_tuned", "ours", "ours_compiled"},
               "roberta_large": {"hf_tuned", "ours", "ours_checkpointed"},
               "mpnet_base": {"ours", "ours_eager"}, "deberta_base": {"ours", "hf_tuned", "ours_eager"}}
    for workload, names in systems.items():
        assert set(res[workload]) == names, workload
        for name, system in res[workload].items():
            s = system["summary"]
            assert s["train_samples_per_s"] > 0 and s["predict_samples_per_s"] > 0 and s["train_tflops"] >= 0, name
    mrpc = res["mrpc"]
    assert len(mrpc["hf"]["runs"]) == len(mrpc["ours"]["runs"]) == 3   # accuracy over 3 seeds
    assert 0 <= mrpc["ours"]["summary"]["test_accuracy_spread"] <= 0.5
    assert mrpc["ours_compiled"]["runs"][0]["runtime"]["compile"]
    assert mrpc["ours_compiled"]["summary"]["compile_seconds"][0] > 0
    assert not mrpc["ours_compiled_fine"]["runs"][0]["runtime"]["length_buckets"]
    assert res["roberta_large"]["ours_checkpointed"]["runs"][0]["runtime"]["grad_checkpointing"]
    assert res["mpnet_base"]["ours_eager"]["runs"][0]["runtime"]["attention"] == "eager"
    assert "bf16" in res["mrpc"]["hf_tuned"]["args"] or "train_sampling_strategy" in res["mrpc"]["hf_tuned"]["args"]
    assert set(res["targets"]) == {"mrpc_train_vs_hf", "mrpc_predict_vs_hf", "bert_base_train_vs_hf_tuned",
                                   "mrpc_accuracy_vs_hf_pt", "bert_base_mfu"}
    assert "| mrpc | ours |" in r.stdout


def test_gpu_bench_runs_only_the_systems_asked_for(tmp_path):
    out = tmp_path / "gpu_smoke.json"
    run = lambda *a: subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--inline", "--out", str(out), *a],  # noqa: E731
                                    cwd=ROOT, capture_output=True, text=True, timeout=300)
    r = run("--workloads", "bert_base", "--systems", "ours,ours_compiled")
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(json.loads(out.read_text())["bert_base"]) == {"ours", "ours_compiled"}
    r = run("--systems", "ours,fast")
    assert r.returncode != 0 and "unknown systems ['fast']" in r.stderr
