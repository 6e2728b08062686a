"""Prediction matrices and their manifests: writing, verifying, checking that they agree.

Per model, under models/<exp>/<model>/:
  oof.npy         float32 (n_train, C), each row predicted once by the fold model that did not see it
  test.npy        float32 (n_test, C), mean of the fold models' test predictions
  test_folds.npy  float32 (K, n_test, C)
  manifest.json   what made them (see `build_manifest`), sha256 of every file it lists
  fold<k>/        per-fold outputs, saved as soon as the fold ends (resume point)
"""
from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import PipelineError
from .io import read_json, read_npy, sha256_file, write_json, write_npy

MATRICES = ("oof.npy", "test.npy", "test_folds.npy")
FOLD_FILES = ("val_pred.npy", "test_pred.npy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scikit-learn", "lightgbm", "torch", "transformers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------- per fold


def fold_dir(model_dir: Path, k: int) -> Path:
    return Path(model_dir) / f"fold{k}"


def save_fold(directory: Path, val_pred: np.ndarray, test_pred: np.ndarray, record: dict) -> None:
    """Matrices first, record last: the record is the commit marker of a finished fold."""
    write_npy(directory / "val_pred.npy", val_pred.astype(np.float32))
    write_npy(directory / "test_pred.npy", test_pred.astype(np.float32))
    files = {name: sha256_file(directory / name) for name in FOLD_FILES + tuple(record.pop("extra_files", ()))}
    write_json(directory / "fold.json", {**record, "files": files})


def load_fold(directory: Path, fingerprint: str) -> Optional[tuple[np.ndarray, np.ndarray, dict]]:
    """A finished fold made with this fingerprint, or None (missing, other settings, damaged)."""
    rec_path = directory / "fold.json"
    if not rec_path.is_file():
        return None
    try:
        record = read_json(rec_path)
    except PipelineError:
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    for name, digest in record.get("files", {}).items():
        if not (directory / name).is_file() or sha256_file(directory / name) != digest:
            return None
    return read_npy(directory / "val_pred.npy"), read_npy(directory / "test_pred.npy"), record


# ----------------------------------------------------------------------------- per model


def write_model(model_dir: Path, oof: np.ndarray, test_folds: np.ndarray, manifest: dict) -> dict:
    """Write the three matrices, then the manifest (with their hashes) last."""
    model_dir = Path(model_dir)
    write_npy(model_dir / "oof.npy", oof.astype(np.float32))
    write_npy(model_dir / "test_folds.npy", test_folds.astype(np.float32))
    write_npy(model_dir / "test.npy", test_folds.mean(axis=0).astype(np.float32))
    manifest = {**manifest, "files": {n: sha256_file(model_dir / n) for n in MATRICES}, "versions": versions()}
    write_json(model_dir / "manifest.json", manifest)
    return manifest


@dataclass
class Matrices:
    """A model's verified matrices: oof (n_train, C), test (n_test, C), test_folds (K, n_test, C)."""
    name: str
    path: Path
    oof: np.ndarray
    test: np.ndarray
    test_folds: np.ndarray
    manifest: dict


def load_model(model_dir: Path) -> Matrices:
    """Load and verify one model's matrices against its manifest (hashes, shapes, finiteness)."""
    model_dir = Path(model_dir)
    mpath = model_dir / "manifest.json"
    if not mpath.is_file():
        raise PipelineError(f"{mpath} not found: train the model first")
    manifest = read_json(mpath)
    for name in MATRICES:
        digest = manifest.get("files", {}).get(name)
        path = model_dir / name
        if not path.is_file():
            raise PipelineError(f"{path} not found (listed in {mpath})")
        if sha256_file(path) != digest:
            raise PipelineError(f"{path} does not match its sha256 in {mpath}")
    oof, test, folds = (read_npy(model_dir / n) for n in MATRICES)
    n_train, n_test, n_classes, k = (manifest[x] for x in ("n_train", "n_test", "n_classes", "n_splits"))
    expected = {"oof.npy": (oof, (n_train, n_classes)), "test.npy": (test, (n_test, n_classes)),
                "test_folds.npy": (folds, (k, n_test, n_classes))}
    for name, (arr, shape) in expected.items():
        if arr.shape != shape:
            raise PipelineError(f"{model_dir / name} has shape {arr.shape}, {mpath} says {shape}")
        if not np.isfinite(arr).all():
            raise PipelineError(f"{model_dir / name} holds non-finite values")
    return Matrices(manifest["model"], model_dir, oof, test, folds, manifest)


AGREE_KEYS = ("train_ids_sha256", "test_ids_sha256", "folds_csv_sha256", "classes", "labels_sha256")


def check_agree(models: list[Matrices], folds_path: Path, folds_info: dict,
                expected: Optional[dict] = None) -> None:
    """Refuse matrices that were made for other rows, classes or folds than each other or folds.csv."""
    ref = {"folds_csv_sha256": folds_info["folds_csv_sha256"], "train_ids_sha256": folds_info["ids_sha256"],
           "labels_sha256": folds_info["labels_sha256"], **(expected or {})}
    for m in models:
        mpath = m.path / "manifest.json"
        for key, value in ref.items():
            if m.manifest.get(key) != value:
                raise PipelineError(f"{mpath} and {folds_path} disagree on {key}: "
                                    "the matrices were made for other data or folds; retrain")
    first = models[0]
    for m in models[1:]:
        for key in AGREE_KEYS:
            if m.manifest.get(key) != first.manifest.get(key):
                raise PipelineError(f"{m.path / 'manifest.json'} and {first.path / 'manifest.json'} disagree on {key}")


def mixed_versions(models: list[Matrices]) -> list[str]:
    """Libraries whose versions differ between the manifests (a warning, not an error)."""
    seen: dict[str, set] = {}
    for m in models:
        for lib, v in m.manifest.get("versions", {}).items():
            seen.setdefault(lib, set()).add(v)
    return sorted(lib for lib, vs in seen.items() if len(vs) > 1)


def list_models(directory: Path) -> list[Path]:
    """Model folders directly under `directory` (those holding a manifest), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"{directory} is not a directory")
    return sorted(p for p in directory.iterdir() if (p / "manifest.json").is_file())
