"""Prediction matrices and their manifests: writing, verifying, checking that they agree.

Per model, under models/<exp>/<model>/:
  oof.npy         float32 (n_train, C), each row predicted once by the fold model that did not see it
  test.npy        float32 (n_test, C), mean of the fold models' test predictions
  test_folds.npy  float32 (K, n_test, C)
  manifest.json   what made them (see `build_manifest`), sha256 of every file it lists, library
                  versions (`versions` at assembly, `fold_versions` per fold: resumed folds may differ)
  fold<k>/        per-fold outputs, saved as soon as the fold ends (resume point); fold.json,
                  written last, commits the fold and holds its files' sha256 and library versions
  fold<k>/seed<s>/  a seed bag's (models[].seeds) per-seed outputs, laid out like fold<k>/; then
                  fold<k>/ holds the means over the seeds and a record listing them

Nothing here runs code on load: matrices through fileio.read_npy (object arrays refused before any
data is read), manifests as JSON, weights through safe_load_safetensors.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import config_hash
from .errors import PipelineError, excerpt
from .fileio import committed, read_json, read_npy, sha256_file
from .tasks import CLASSIFICATION

log = logging.getLogger("pipeline.artifacts")
MATRICES = ("oof.npy", "test.npy", "test_folds.npy")
MANIFEST = "manifest.json"   # written last: the commit marker of a model's matrices
FOLD_FILES = ("val_pred.npy", "test_pred.npy")
# What load_model needs from a manifest, with the type each must have. A manifest from before the
# prepared-data hashes were recorded fails here, so `train` reassembles it from its saved folds.
MANIFEST_KEYS = {"model": str, "files": dict, "n_train": int, "n_test": int, "n_classes": int, "n_splits": int,
                 "classes": list, "prepared_train_sha256": str, "prepared_test_sha256": str}


def manifest_path(model_dir: Path) -> Path:
    return Path(model_dir) / MANIFEST


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scikit-learn", "lightgbm", "torch", "transformers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------- is a model current?


def fingerprint_parts(model: dict, classes: list[str], metric: str, prepared_meta: dict, folds_info: dict,
                      round_: int, pseudo_sha256: Optional[str]) -> dict:
    """Everything that shapes a model's predictions: its config (to_dict of the ModelConfig), the
    classes, the metric (early stopping), the prepared data, the folds, the round and its pseudo
    labels. The one definition the train stage skips by and every reader refuses stale models by."""
    return {"model": model, "classes": classes, "metric": metric, "train": prepared_meta["train_sha256"],
            "test": prepared_meta["test_sha256"], "folds": folds_info["folds_csv_sha256"], "round": round_,
            "extra": pseudo_sha256}


def fingerprint(parts: dict) -> str:
    return config_hash(parts)


# What each part is called in a message, and the manifest key that recorded it.
_PART_NAMES = {"classes": ("classes", "classes"), "metric": ("metric", "metric"),
               "train": ("prepared train data", "prepared_train_sha256"),
               "test": ("prepared test data", "prepared_test_sha256"),
               "folds": ("folds", "folds_csv_sha256"), "round": ("round", "round"),
               "extra": ("pseudo labels", "pseudo_labels_sha256")}


def stale_reason(manifest: dict, parts: dict) -> Optional[str]:
    """None when the manifest was made with exactly these parts; else what changed, in words."""
    if manifest.get("config_sha256") == fingerprint(parts):
        return None
    changed = config_diff(manifest.get("config"), parts["model"])
    changed += [name for key, (name, mkey) in _PART_NAMES.items() if manifest.get(mkey) != parts[key]]
    return ", ".join(changed) or "settings recorded by an older version"


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """['params.C: 4.0 -> 2.0', ...]: the dotted keys whose values differ between two config trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    return [f"{prefix.rstrip('.') or 'config'}: {excerpt(old, 40)} -> {excerpt(new, 40)}"]


# ----------------------------------------------------------------------------- per fold


def fold_dir(model_dir: Path, k: int) -> Path:
    return Path(model_dir) / f"fold{k}"


def seed_dir(fold: Path, seed: int) -> Path:
    """One seed's outputs inside a fold of a seed bag (a fold laid out like fold<k>/ itself)."""
    return Path(fold) / f"seed{seed}"


def fold_model_dirs(model_dir: Path, k: int) -> list[Path]:
    """The folders holding fold k's fitted model files, one per seed of a seed bag: fold<k>/seed<s>/
    for each seed of its record's "seeds" when there are two or more (the fold's prediction is
    their mean), else fold<k>/ itself (no "seeds" key, or one seed)."""
    directory = fold_dir(model_dir, k)
    record = read_json(directory / "fold.json")
    seeds = record.get("seeds") if isinstance(record, dict) else None
    if isinstance(seeds, list) and len(seeds) > 1:
        return [seed_dir(directory, s) for s in seeds]
    return [directory]


def save_fold(directory: Path, val_pred: np.ndarray, test_pred: np.ndarray, record: dict) -> None:
    """Matrices and record land together, the record last: it is the commit marker of a finished
    fold and holds the sha256 of its matrices and of the checkpoint files the model saved before."""
    with committed() as c:
        c.write_npy(directory / "val_pred.npy", val_pred.astype(np.float32))
        c.write_npy(directory / "test_pred.npy", test_pred.astype(np.float32))
        files = {name: c.sha256(directory / name) for name in FOLD_FILES}
        files.update({name: sha256_file(directory / name) for name in record.pop("extra_files", ())})
        c.write_json(directory / "fold.json", {**record, "files": files, "versions": versions()})


def load_fold(directory: Path, fingerprint: str) -> Optional[tuple[np.ndarray, np.ndarray, dict]]:
    """A finished fold made with this fingerprint, or None (missing, other settings, damaged).

    A damaged fold (a file missing, changed or unreadable) is logged, naming the file, and retrained;
    one made under other library versions is reused with a warning (the manifest records it).
    """
    rec_path = directory / "fold.json"
    if not rec_path.is_file():
        return None
    try:
        record = read_json(rec_path)
    except PipelineError as e:
        log.warning("%s; retraining this fold", e)
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    files = record.get("files")
    if not isinstance(files, dict) or not set(FOLD_FILES) <= set(files):
        log.warning("%s lists no matrices; retraining this fold", rec_path)
        return None
    for name, digest in files.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            log.warning("%s is missing or does not match its sha256 in %s; retraining this fold", path, rec_path)
            return None
    try:
        val_pred, test_pred = read_npy(directory / "val_pred.npy"), read_npy(directory / "test_pred.npy")
    except PipelineError as e:
        log.warning("%s; retraining this fold", e)
        return None
    if (val_pred.ndim != 2 or test_pred.ndim != 2 or val_pred.shape[1] != test_pred.shape[1]
            or val_pred.shape[0] != record.get("n_valid")):
        log.warning("%s: matrices of shapes %s and %s do not fit the record; retraining this fold",
                    directory, val_pred.shape, test_pred.shape)
        return None
    drift = sorted(lib for lib, v in versions().items() if record.get("versions", {}).get(lib, v) != v)
    if drift:
        log.warning("%s was made under other versions of %s; reused (--force retrains)", directory, ", ".join(drift))
    return val_pred, test_pred, record


def adopt_fold(plain: Path, dst: Path, fingerprint: str, seed: int) -> bool:
    """Move a plain model's finished fold (fold<k>/, trained with `seed` alone, so made with
    `fingerprint`) into `dst` (fold<k>/seed<s>/ of the bag that model became): its files are
    copied and the record lands last (the commit marker), then the copied checkpoint files leave
    fold<k>/, whose predictions and record the bag's mean replaces. False when there is no such fold."""
    found = load_fold(plain, fingerprint)
    if found is None:
        return False
    record = found[2]
    dst = Path(dst)
    with committed() as c:
        for name in record["files"]:
            c.write_with(dst / name, functools.partial(shutil.copyfile, plain / name))
        c.write_json(dst / "fold.json", {**record, "seed": seed, "adopted_from": plain.name})
    for name in set(record["files"]) - set(FOLD_FILES):
        (plain / name).unlink(missing_ok=True)
    return True


# ----------------------------------------------------------------------------- per model


def write_model(model_dir: Path, oof: np.ndarray, test_folds: np.ndarray, manifest: dict,
                config_yaml: str) -> dict:
    """The three matrices, the resolved config and the manifest (with their hashes) land together,
    the manifest last: a write that fails leaves the model as it was."""
    model_dir = Path(model_dir)
    with committed() as c:
        c.write_npy(model_dir / "oof.npy", oof.astype(np.float32))
        c.write_npy(model_dir / "test_folds.npy", test_folds.astype(np.float32))
        c.write_npy(model_dir / "test.npy", test_folds.mean(axis=0).astype(np.float32))
        c.write_text(model_dir / "config.yaml", config_yaml)
        manifest = {**manifest, "files": {n: c.sha256(model_dir / n) for n in MATRICES}, "versions": versions(),
                    "fold_versions": _fold_versions(model_dir, len(test_folds)),
                    "fold_records": {f"fold{k}/fold.json": sha256_file(fold_dir(model_dir, k) / "fold.json")
                                     for k in range(len(test_folds))}}
        c.write_json(model_dir / MANIFEST, manifest)
    return manifest


def folds_intact(model_dir: Path, manifest: dict, fp: str) -> bool:
    """Every fold the manifest lists is on disk as it was when the model was assembled: its
    record has the sha256 the manifest holds, and every file the record lists (matrices,
    checkpoints) has its sha256. A missing or changed file is logged by name."""
    records = manifest.get("fold_records")
    if not isinstance(records, dict) or len(records) != manifest.get("n_splits"):
        return False
    for name, digest in records.items():
        path = Path(model_dir) / name
        if not path.is_file() or sha256_file(path) != digest:
            log.warning("%s is missing or does not match its sha256 in %s", path, Path(model_dir) / MANIFEST)
            return False
        if load_fold(path.parent, fp) is None:
            return False
    return True


def _fold_versions(model_dir: Path, k: int) -> list[dict]:
    """Library versions each fold was trained under (folds reused from an earlier run may differ)."""
    out = []
    for i in range(k):
        try:
            record = read_json(fold_dir(model_dir, i) / "fold.json")
        except PipelineError:
            record = {}
        out.append(record.get("versions", {}) if isinstance(record, dict) else {})
    return out


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
    """Load and verify one model's matrices against its manifest (hashes, dtype, shapes, finiteness)."""
    model_dir = Path(model_dir)
    mpath = model_dir / MANIFEST
    if not mpath.is_file():
        raise PipelineError(f"{mpath} not found: train the model first")
    manifest = _checked_manifest(read_json(mpath), mpath)
    for name in MATRICES:
        digest = manifest["files"].get(name)
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
        if arr.dtype != np.float32:
            raise PipelineError(f"{model_dir / name} holds {arr.dtype}, expected float32 probabilities")
        if arr.shape != shape:
            raise PipelineError(f"{model_dir / name} has shape {arr.shape}, {mpath} says {shape}")
        if not np.isfinite(arr).all():
            raise PipelineError(f"{model_dir / name} holds non-finite values")
    return Matrices(manifest["model"], model_dir, oof, test, folds, manifest)


def _checked_manifest(manifest: Any, mpath: Path) -> dict:
    if not isinstance(manifest, dict):
        raise PipelineError(f"{mpath} is not a manifest (a JSON object expected)")
    for key, tp in MANIFEST_KEYS.items():
        value = manifest.get(key)
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise PipelineError(f"{mpath}: {key} missing or not {tp.__name__}; retrain the model")
    return manifest


AGREE_KEYS = ("task", "train_ids_sha256", "test_ids_sha256", "folds_csv_sha256", "classes", "labels_sha256",
              "n_splits", "prepared_train_sha256", "prepared_test_sha256")


def recorded(manifest: dict, key: str) -> Any:
    """A manifest's value of `key`; a manifest from before task types has task classification."""
    value = manifest.get(key)
    return CLASSIFICATION.name if key == "task" and value is None else value


def check_agree(models: list[Matrices], folds_path: Path, folds_info: dict,
                expected: Optional[dict] = None) -> None:
    """Refuse matrices that were made for other rows, classes or folds than each other or folds.csv.

    `expected`: manifest values the caller knows from the prepared data (test ids hash, classes,
    n_test, prepared file hashes); a manifest lacking one of them is refused too.
    """
    ref = {"folds_csv_sha256": folds_info["folds_csv_sha256"], "train_ids_sha256": folds_info["ids_sha256"],
           "labels_sha256": folds_info["labels_sha256"]}
    for m in models:
        mpath = m.path / MANIFEST
        for key, value in ref.items():
            if m.manifest.get(key) != value:
                raise PipelineError(f"{mpath} and {folds_path} disagree on {key}: "
                                    "the matrices were made for other data or folds; retrain")
        for key, value in (expected or {}).items():
            if recorded(m.manifest, key) != value:
                raise PipelineError(f"{mpath} and the prepared data disagree on {key}: "
                                    "the matrices were made for other data; retrain")
        _check_shapes(m, folds_path, folds_info, expected or {})
    first = models[0]
    for m in models[1:]:
        for key in AGREE_KEYS:
            if recorded(m.manifest, key) != recorded(first.manifest, key):
                raise PipelineError(f"{m.path / 'manifest.json'} and {first.path / 'manifest.json'} disagree on {key}")
        if m.test.shape != first.test.shape:
            raise PipelineError(f"{m.path / 'test.npy'} and {first.path / 'test.npy'} disagree on shape "
                                f"({m.test.shape} vs {first.test.shape})")


def _check_shapes(m: Matrices, folds_path: Path, folds_info: dict, expected: dict) -> None:
    """The arrays themselves, not only the manifest's numbers, must fit the rows they are used for."""
    n_rows = folds_info.get("n_rows")
    if n_rows is not None and m.oof.shape[0] != n_rows:
        raise PipelineError(f"{m.path / 'oof.npy'} has {m.oof.shape[0]} rows, {folds_path} has {n_rows}")
    n_classes = len(m.manifest["classes"])
    for name, arr in (("oof.npy", m.oof), ("test.npy", m.test), ("test_folds.npy", m.test_folds)):
        if arr.shape[-1] != n_classes:
            raise PipelineError(f"{m.path / name} has {arr.shape[-1]} columns for {n_classes} classes")
    k = folds_info.get("n_splits")
    if k is not None and m.test_folds.shape[0] != k:
        raise PipelineError(f"{m.path / 'test_folds.npy'} holds {m.test_folds.shape[0]} folds, {folds_path} has {k}")
    if "n_test" in expected and m.test.shape[0] != expected["n_test"]:
        raise PipelineError(f"{m.path / 'test.npy'} has {m.test.shape[0]} rows, the test file has {expected['n_test']}")


def mixed_versions(models: list[Matrices]) -> list[str]:
    """Libraries whose versions differ between the manifests or between the folds of one model
    (a warning, not an error)."""
    seen: dict[str, set] = {}
    for m in models:
        for record in [m.manifest.get("versions", {})] + list(m.manifest.get("fold_versions", [])):
            for lib, v in (record or {}).items():
                seen.setdefault(lib, set()).add(v)
    return sorted(lib for lib, vs in seen.items() if len(vs) > 1)


def list_models(directory: Path) -> list[Path]:
    """Model folders directly under `directory` (those holding a manifest), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"{directory} is not a directory")
    return sorted(p for p in directory.iterdir() if (p / MANIFEST).is_file())
