"""The Ray backend against a real two-node Ray cluster on this machine (loopback only, one CPU a node;
the second node declares one GPU, which Ray takes at its word, so GPU slots run their jobs on its
CPU): jobs on both nodes, artifacts byte-identical to the local backend, a killed driver resumed, a
killed worker retried, a failing job named, an impossible resource request refused before anything
runs, GPU jobs on a long-lived slot beside the CPU jobs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, WORDS, Exp, base_config, tiny_bert, tiny_pairs
from pipeline.ray_backend import loopback_only
from pipeline.faults import KILL_AT, KILL_ONCE_AT, KILL_ONCE_MARKER, RAISE_AT
from test_kill import comparable as kill_comparable

loopback_only()
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

STAGES = ("preprocess", "folds", "train", "ensemble")
# Manifest and fold-record keys that say when and where, not what.
VOLATILE = {"seconds", "fit_seconds", "timings", "fold_records", "node", "resources", "dispatch", "settings_sha256",
            "slot", "samples_per_s", "train_seconds", "valid_seconds"}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    yield c
    c.shutdown()


def config(root: Path, backend: str, address: str | None = None) -> dict:
    cfg = base_config(root)
    cfg["models"][1]["params"]["n_jobs"] = 1  # one thread either way: the same trees
    cfg["execution"] = {"backend": backend, "address": address}
    return cfg


def make(root: Path, backend: str, address: str | None = None) -> Exp:
    (root / "in").mkdir(parents=True)
    tiny_pairs(90, 0).to_csv(root / "in" / "train.csv", index=False)
    tiny_pairs(30, 1, labelled=False).to_csv(root / "in" / "test.csv", index=False)
    e = Exp(root, root / "tiny.yaml")
    e.write_config(config(root, backend, address))
    return e


def comparable(root: Path) -> dict[str, object]:
    """Matrices, manifests (less timings and nodes), fold records, checkpoints and submissions."""
    return kill_comparable(root, ("models", "subs"), VOLATILE, configs=False)


def records(e: Exp) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(e.models.glob("*/fold*/fold.json"))]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    e = make(tmp_path_factory.mktemp("local"), "local")
    for stage in STAGES:
        assert e.run(stage) == 0
    return e.tmp


def test_jobs_on_both_nodes_and_byte_identical_to_local(cluster, local_run, tmp_path):
    e = make(tmp_path / "ray", "ray", cluster.address)
    for stage in STAGES:
        assert e.run(stage) == 0
    recs = records(e)
    assert len(recs) == 6
    nodes = {r["node"] for r in recs}
    assert nodes == {n.node_id for n in cluster.list_all_nodes()} and len(nodes) == 2
    assert all(r["resources"]["num_cpus"] == 1 and r["resources"]["threads"] == 1 for r in recs)
    ours, theirs = comparable(e.tmp), comparable(local_run)
    assert sorted(ours) == sorted(theirs)
    assert [k for k in ours if ours[k] != theirs[k]] == []
    assert (e.tmp / "subs" / "tiny.csv").read_bytes() == (local_run / "subs" / "tiny.csv").read_bytes()


def _stage(e: Exp, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.train", str(e.config), *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_killed_driver_resumes_redoing_only_unfinished_jobs(cluster, local_run, tmp_path):
    e = make(tmp_path / "ray", "ray", cluster.address)
    assert e.run("preprocess") == 0 and e.run("folds") == 0
    killed = _stage(e, {KILL_AT: "write:*/fold.json"})  # dies writing the second fold it gets back
    assert killed.returncode == -9, killed.stderr[-2000:]
    finished = {p: p.stat().st_mtime_ns for p in e.models.glob("*/fold*/fold.json")}
    rerun = _stage(e, {})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # finished folds not redone
    assert len(records(e)) == 6
    assert e.run("ensemble") == 0
    assert (e.tmp / "subs" / "tiny.csv").read_bytes() == (local_run / "subs" / "tiny.csv").read_bytes()


def test_worker_killed_mid_job_is_retried(cluster, tmp_path):
    e = make(tmp_path / "ray", "ray", cluster.address)
    assert e.run("preprocess") == 0 and e.run("folds") == 0
    marker = tmp_path / "killed-once"
    run = _stage(e, {KILL_ONCE_AT: "job:plgbm/fold1", KILL_ONCE_MARKER: str(marker)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert marker.exists()  # the worker did die once
    assert len(records(e)) == 6


def test_failing_job_is_one_line_naming_model_fold_and_node(cluster, tmp_path):
    e = make(tmp_path / "ray", "ray", cluster.address)
    assert e.run("preprocess") == 0 and e.run("folds") == 0
    run = _stage(e, {RAISE_AT: "job:lr/fold2"})
    assert run.returncode == 2
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model 'lr' fold 2 failed on node ")
    assert "injected failure at job:lr/fold2" in err[0]
    assert not (e.models / "lr" / "fold2" / "fold.json").exists()
    kept = records(e)
    assert kept and all(r["node"] for r in kept)  # the jobs that finished are kept
    assert _stage(e, {}).returncode == 0 and len(records(e)) == 6


def test_resources_no_node_can_meet_refused_before_anything_runs(cluster, tmp_path, capsys):
    e = make(tmp_path / "ray", "ray", cluster.address)
    assert e.run("preprocess") == 0 and e.run("folds") == 0
    cfg = config(e.tmp, "ray", cluster.address)
    cfg["models"][0]["resources"] = {"num_cpus": 4}
    e.write_config(cfg)
    capsys.readouterr()
    assert e.run("train") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models.lr.resources (4 CPU, 0 GPU) fit no node of the cluster" in err[0]
    assert not list(e.models.rglob("*"))


def test_resources_are_not_part_of_the_fingerprint(local_run, tmp_path, capsys):
    """Moving a model to other hardware must not make its finished matrices stale."""
    shutil.copytree(local_run, tmp_path / "run")
    e = Exp(tmp_path / "run", tmp_path / "run" / "tiny.yaml")
    cfg = config(e.tmp, "local")
    cfg["models"][0]["resources"] = {"num_cpus": 2, "memory_gb": 1.5}
    e.write_config(cfg)
    assert e.run("preprocess") == 0 and e.run("train") == 0 and e.run("ensemble") == 0


@pytest.mark.parametrize("soft", ["false", "true"])
def test_pseudo_label_students_on_ray_equal_local(cluster, tmp_path, soft):
    """A pseudo-label round's students run through the same executor: same matrices as locally
    (soft: the weighted pseudo rows travel to the workers too)."""
    runs = {}
    for backend in ("local", "ray"):
        e = make(tmp_path / backend, backend, cluster.address if backend == "ray" else None)
        for stage in ("preprocess", "folds", "train"):
            assert e.run(stage) == 0
        assert e.run("pseudo_label", "pseudo.enabled=true", "pseudo.min_confidence=0.6", f"pseudo.soft={soft}") == 0
        runs[backend] = e
    students = sorted(runs["local"].models.glob("rounds/r1/*/oof.npy"))
    assert len(students) == 2
    for path in students:
        other = runs["ray"].models / path.relative_to(runs["local"].models)
        assert path.read_bytes() == other.read_bytes()
    student_records = [json.loads(p.read_text()) for p in runs["ray"].models.glob("rounds/r1/*/fold*/fold.json")]
    assert len(student_records) == 6 and all(r["resources"] for r in student_records)  # ran on the cluster


def test_seed_bag_on_ray_equals_local(cluster, tmp_path):
    """A seed bag's (model, fold, seed) jobs run on the cluster; the same files as locally."""
    runs = {}
    for backend in ("local", "ray"):
        e = make(tmp_path / backend, backend, cluster.address if backend == "ray" else None)
        cfg = config(e.tmp, backend, cluster.address if backend == "ray" else None)
        cfg["models"] = [{**cfg["models"][1], "seeds": [4, 9]}]
        e.write_config(cfg)
        for stage in ("preprocess", "folds", "train"):
            assert e.run(stage) == 0
        runs[backend] = e
    files = sorted(p.relative_to(runs["local"].models) for p in runs["local"].models.rglob("*.npy"))
    assert len(files) == 3 + 3 * 2 + 3 * 2 * 2  # matrices, fold means, seed folds
    for rel in files:
        assert (runs["local"].models / rel).read_bytes() == (runs["ray"].models / rel).read_bytes(), rel
    seed_records = [json.loads(p.read_text()) for p in runs["ray"].models.glob("plgbm/fold*/seed*/fold.json")]
    assert len(seed_records) == 6 and all(r["resources"] for r in seed_records)


def test_gpu_jobs_run_on_a_long_lived_slot_beside_the_cpu_jobs(cluster, tmp_path):
    """A transformer's folds go to the GPU slot (one worker for all three: its cache, holding the
    tokenised tables, carries over from job to job) while the linear model's folds run as CPU tasks
    on the other node; every file as the local backend writes it."""
    bert = tiny_bert(tmp_path / "bert", sorted(set(WORDS)))
    runs = {}
    for backend in ("local", "ray"):
        e = make(tmp_path / backend, backend, cluster.address if backend == "ray" else None)
        cfg = config(e.tmp, backend, cluster.address if backend == "ray" else None)
        cfg["models"] = [cfg["models"][0], {"name": "tr", "kind": "transformer", "view": "raw", "params": {
            "backbone": str(bert), "max_length": 16, "epochs": 1, "batch_size": 16, "patience": 0,
            "precision": "fp32", "num_threads": 1}}]
        e.write_config(cfg)
        for stage in STAGES:
            assert e.run(stage) == 0, (backend, stage)
        runs[backend] = e
    assert comparable(runs["local"].tmp) == comparable(runs["ray"].tmp)
    recs = {p.parent.parent.name + "/" + p.parent.name: json.loads(p.read_text())
            for p in sorted(runs["ray"].models.glob("*/fold*/fold.json"))}
    slots = [recs[f"tr/fold{k}"]["slot"] for k in range(3)]
    assert {s["name"] for s in slots} == {"slot0"} and sorted(s["job"] for s in slots) == [0, 1, 2]
    assert sorted(s["cache_entries_at_start"] for s in slots)[1:] > [0, 0]   # jobs after the first reuse
    gpu_node = {n.node_id for n in cluster.worker_nodes}   # the node that declares the GPU
    assert {recs[f"tr/fold{k}"]["node"] for k in range(3)} == gpu_node
    assert all("slot" not in recs[f"lr/fold{k}"] for k in range(3))



def test_frozen_embedding_jobs_share_the_gpu_slot_and_its_embeddings(cluster, tmp_path):
    """embed_lr's folds go to the GPU slot (its encoder on the slot's GPU where there is one),
    the first one embedding the tables and the others reusing them from the slot's cache; the
    TF-IDF model's folds stay CPU tasks on the other node."""
    bert = tiny_bert(tmp_path / "bert", sorted(set(WORDS)))
    e = make(tmp_path / "ray", "ray", cluster.address)
    cfg = config(e.tmp, "ray", cluster.address)
    cfg["models"] = [cfg["models"][0], {"name": "emb", "kind": "embed_lr", "view": "raw",
                                        "params": {"backbone": str(bert), "max_length": 16}}]
    e.write_config(cfg)
    for stage in STAGES:
        assert e.run(stage) == 0, stage
    recs = {p.parent.parent.name + "/" + p.parent.name: json.loads(p.read_text())
            for p in sorted(e.models.glob("*/fold*/fold.json"))}
    gpu_node = {n.node_id for n in cluster.worker_nodes}
    slots = [recs[f"emb/fold{k}"]["slot"] for k in range(3)]
    assert {recs[f"emb/fold{k}"]["node"] for k in range(3)} == gpu_node and {s["name"] for s in slots} == {"slot0"}
    first = min(slots, key=lambda s: s["job"])
    assert all(s["cache_entries_at_start"] > first["cache_entries_at_start"] for s in slots if s is not first)
    assert all("slot" not in recs[f"lr/fold{k}"] and recs[f"lr/fold{k}"]["node"] not in gpu_node for k in range(3))
