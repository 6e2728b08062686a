"""run_all.sh runs every stage, in order, with one Python: $PIPELINE_PYTHON, else python, else python3."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

STAGES = ["preprocess", "folds", "pretrain", "train", "pseudo_label", "ensemble", "report"]


def fake_bin(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """A PATH of its own: `dirname`, and fake interpreters that log their arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    for name in names:
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        exe.chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize("names, env, used", [(["python3"], {}, "python3"),
                                              (["python", "python3"], {}, "python"),
                                              (["python", "py311"], {"PIPELINE_PYTHON": "py311"}, "py311")])
def test_every_stage_in_order_with_the_python_found(tmp_path, names, env, used):
    bin_dir, log = fake_bin(tmp_path, names)
    r = subprocess.run([shutil.which("bash"), str(ROOT / "run_all.sh"), "configs/x.yaml", "a=1"],
                       env={"PATH": str(bin_dir), **env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [f"{used} -m pipeline.{s} configs/x.yaml a=1" for s in STAGES]


def test_a_relative_interpreter_path_means_where_the_script_was_started(tmp_path):
    bin_dir, log = fake_bin(tmp_path, ["mypy3"])
    r = subprocess.run([shutil.which("bash"), str(ROOT / "run_all.sh")], cwd=tmp_path,
                       env={"PATH": str(bin_dir), "PIPELINE_PYTHON": "bin/mypy3"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines()[0] == "mypy3 -m pipeline.preprocess configs/default.yaml"
