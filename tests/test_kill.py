"""Kill at any moment: `run_all.sh` SIGKILLed at named points, rerun, and compared with a clean run.

The points come from pipeline/faults.py: PIPELINE_TEST_KILL_AT=write:<glob> kills the stage process
once the named file's data is in its temporary file, before the rename. One chain of runs, each
killed further along than the last, keeps this quick: every rerun must skip every (model, fold) job
that was finished when the previous run died, and the last one, uninterrupted, must give matrices
and a submission byte-identical to an uninterrupted run in another directory (run alongside).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from conftest import ROOT, base_config, tiny_pairs
from pipeline.faults import KILL_AT

# (what the point is, glob of the file being written when the process dies)
CHAIN = [
    ("inside a fold, writing its held-out predictions", "write:*/lr/fold1/val_pred.npy"),
    ("assembling a model: its config saved, matrices and manifest not yet", "write:*/lr/config.yaml"),
    ("inside a fold, saving the fitted booster", "write:*/plgbm/fold1/booster.txt"),
    ("writing a model's OOF matrix", "write:*/plgbm/oof.npy"),
    ("during the ensemble, between two submissions", "write:*/subs/tiny_blend.csv"),
]
VOLATILE = {"seconds", "fit_seconds", "timings", "settings_sha256", "fold_records"}  # wall-clock times (also inside the hashed fold records); data.dir's hash


def setup(root: Path) -> Path:
    (root / "in").mkdir(parents=True)
    tiny_pairs(90, 0).to_csv(root / "in" / "train.csv", index=False)
    tiny_pairs(30, 1, labelled=False).to_csv(root / "in" / "test.csv", index=False)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(base_config(root)), encoding="utf-8")
    return config


def start(config: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    env["PYTHONPATH"] = str(ROOT)
    if kill_at:
        env[KILL_AT] = kill_at
    return subprocess.Popen(["bash", str(ROOT / "run_all.sh"), str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def finished_jobs(models: Path) -> dict[str, tuple]:
    """Committed (model, fold) jobs and assembled models -> identity of their files (inode, mtime)."""
    out = {}
    for marker in list(models.glob("*/fold*/fold.json")) + list(models.glob("*/manifest.json")):
        for f in marker.parent.iterdir():
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                out[str(f.relative_to(models))] = (st.st_ino, st.st_mtime_ns)
    return out


def comparable(root: Path, tops=("work", "models", "subs"), volatile=VOLATILE, configs: bool = True) -> dict:
    """Every output under `tops` (temporaries included, so leftovers show), in a form that two runs
    in different directories share: paths replaced, the `volatile` keys (wall-clock times) dropped;
    config.yaml files left out unless `configs`."""
    out = {}
    for top in tops:
        for f in sorted((root / top).rglob("*")):
            if not f.is_file() or (f.suffix == ".yaml" and not configs):
                continue
            rel = str(f.relative_to(root))
            if f.suffix in (".json", ".yaml"):
                text = f.read_text(encoding="utf-8").replace(str(root), "<root>")
                out[rel] = _drop(json.loads(text), volatile) if f.suffix == ".json" else text
            else:
                out[rel] = f.read_bytes()
    return out


def _drop(obj, volatile):
    if isinstance(obj, dict):
        return {k: _drop(v, volatile) for k, v in obj.items() if k not in volatile}
    if isinstance(obj, list):
        return [_drop(v, volatile) for v in obj]
    return obj


def test_killed_anywhere_resumes_to_identical_results(tmp_path):
    reference = start(setup(tmp_path / "ref"))  # the uninterrupted run, alongside the chain
    root = tmp_path / "run"
    config = setup(root)
    models = root / "models" / "tiny"
    done: dict[str, tuple] = {}
    for what, point in CHAIN:
        rc, out = finish(start(config, point))
        assert rc == 137, f"not killed {what}: rc {rc}\n{out[-3000:]}"  # bash passes on 128 + SIGKILL
        assert "error:" not in out and "Traceback" not in out, out[-3000:]
        target = point.split("*/")[1]
        hits = [p for p in root.rglob("*") if str(p).endswith(target) or _temp_of(p, target)]
        assert any(_temp_of(p, target) for p in hits), f"no temporary file for {target}: died elsewhere"
        _assert_skipped(done, finished_jobs(models), what)
        done = finished_jobs(models)
    # the skip checks above had finished jobs to watch: every fold, and both models assembled
    assert {f"{m}/fold{k}/fold.json" for m in ("lr", "plgbm") for k in range(3)} <= set(done), sorted(done)
    assert {"lr/manifest.json", "plgbm/manifest.json"} <= set(done), sorted(done)
    rc, out = finish(start(config))
    assert rc == 0, out[-3000:]
    _assert_skipped(done, finished_jobs(models), "the final rerun")
    assert re.search(r"lr: up to date, skipped", out) and re.search(r"plgbm: up to date, skipped", out), out
    rc, ref_out = finish(reference)
    assert rc == 0, ref_out[-3000:]
    ours, theirs = comparable(root), comparable(tmp_path / "ref")
    assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)  # nothing missing, no leftover temp
    assert [k for k in ours if ours[k] != theirs[k]] == []
    assert (root / "subs" / "tiny.csv").read_bytes() == (tmp_path / "ref" / "subs" / "tiny.csv").read_bytes()


def _temp_of(p: Path, target: str) -> bool:
    """A temporary file of atomic_path for `target` (dir/.name.<host>.<pid>.<random>.tmp)."""
    parent, name = os.path.split(target)
    return p.name.startswith(f".{name}.") and p.name.endswith(".tmp") and str(p.parent).endswith(parent)


def _assert_skipped(before: dict[str, tuple], after: dict[str, tuple], when: str) -> None:
    """Every file of a job finished before the kill is untouched: the job was skipped, not redone."""
    redone = [f for f, ident in before.items() if after.get(f) != ident]
    assert not redone, f"{when}: finished jobs were redone or lost: {redone}"
