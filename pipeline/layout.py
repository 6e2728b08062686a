"""Where every stage writes: the artifact layout in one place, the check that no output can land
on an input, and the lock that keeps two processes from writing one experiment at once.

    <paths.work>/<exp>/prepared/         preprocess
    <paths.work>/<exp>/folds.csv, .json  folds (+ config.yaml)
    <paths.work>/<exp>/pseudo/           pseudo_label's labels
    <paths.work>/<exp>/pretrained/<name>/ pretrain (a backbone folder + pretrain.json; resume/ while running)
    <paths.models>/<exp>/<model>/        train (round 0)
    <paths.models>/<exp>/rounds/r<N>/    pseudo_label's students (and their ensembles/)
    <paths.models>/<exp>/ensembles/      ensemble
    <paths.submissions>/<exp>[_<method>].csv
    <paths.reports>/<exp>/               report

Names (experiment, models) are identifiers (names.py), so a name can never climb out of its root,
nest, or take the place of another folder of the layout; `paths.*` are the only way to put outputs
elsewhere. Each artifact's owner module (prepared, fold_assignment, artifacts, pseudo_labels,
backbones, combination, submission, diagnostics) writes and reads its files under these folders.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator, Optional

from .config import ExperimentConfig, config_yaml, expand_env
from .errors import PipelineError
from .fileio import Commit, write_text
from .names import METHODS

CONFIG_FILE = "config.yaml"   # the resolved config beside every output it produced


# ----------------------------------------------------------------------------- paths


def work_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.paths.work) / cfg.experiment


def prepared_dir(cfg: ExperimentConfig) -> Path:
    return work_dir(cfg) / "prepared"


def folds_paths(cfg: ExperimentConfig) -> tuple[Path, Path]:
    """(folds.csv, folds.json)."""
    return work_dir(cfg) / "folds.csv", work_dir(cfg) / "folds.json"


def pseudo_dir(cfg: ExperimentConfig) -> Path:
    return work_dir(cfg) / "pseudo"


def round_paths(cfg: ExperimentConfig, round_: int) -> tuple[Path, Path]:
    """(r<N>.csv, r<N>.json) of pseudo-label round N."""
    return pseudo_dir(cfg) / f"r{round_}.csv", pseudo_dir(cfg) / f"r{round_}.json"


def pretrained_root(cfg: ExperimentConfig) -> Path:
    return work_dir(cfg) / "pretrained"


def pretrained_dir(cfg: ExperimentConfig, name: str) -> Path:
    """The pretrain stage's backbone folder, what `backbone: pretrained:<name>` loads."""
    return pretrained_root(cfg) / name


def experiment_models_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.paths.models) / cfg.experiment


def models_dir(cfg: ExperimentConfig, round_: int = 0) -> Path:
    base = experiment_models_dir(cfg)
    return base if round_ == 0 else base / "rounds" / f"r{round_}"


def model_dir(cfg: ExperimentConfig, name: str, round_: int = 0) -> Path:
    return models_dir(cfg, round_) / name


def ensembles_dir(cfg: ExperimentConfig, round_: int = 0) -> Path:
    return models_dir(cfg, round_) / "ensembles"


def submission_path(cfg: ExperimentConfig, method: Optional[str] = None) -> Path:
    """submissions/<exp>.csv (the submitted method) or submissions/<exp>_<method>.csv."""
    stem = cfg.experiment if method is None else f"{cfg.experiment}_{method}"
    return Path(cfg.paths.submissions) / f"{stem}.csv"


def reports_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.paths.reports) / cfg.experiment


def data_dir(cfg: ExperimentConfig) -> Path:
    return Path(expand_env(cfg.data.dir, "data.dir"))


def input_files(cfg: ExperimentConfig) -> dict[str, Path]:
    """Every file the stages read that the user owns: {config key: path}."""
    base = data_dir(cfg)
    out = {"data.train": base / cfg.data.train, "data.test": base / cfg.data.test}
    sample = getattr(cfg.data, "sample_submission", None)
    if sample:
        out["data.sample_submission"] = base / sample
    return out


def owned_dirs(cfg: ExperimentConfig) -> list[Path]:
    """Folders the pipeline writes anything into (and may replace files in)."""
    return [prepared_dir(cfg), pseudo_dir(cfg), pretrained_root(cfg), experiment_models_dir(cfg), reports_dir(cfg)]


def owned_files(cfg: ExperimentConfig) -> list[Path]:
    """Single files the pipeline writes outside its owned folders."""
    csv_path, json_path = folds_paths(cfg)
    return ([csv_path, json_path, work_dir(cfg) / "config.yaml", submission_path(cfg)]
            + [submission_path(cfg, m) for m in METHODS])


def check_outputs_spare_inputs(cfg: ExperimentConfig, config_path: Optional[Path]) -> None:
    """Refuse, before anything is written, a config under which some stage would write over or
    into the place of a file it reads (an input file, the config file itself)."""
    inputs = dict(input_files(cfg))
    if config_path is not None:
        inputs["the config file"] = Path(config_path)
    for key, path in inputs.items():
        for out in owned_files(cfg):
            if _same_file(path, out):
                raise PipelineError(f"config: an output ({out}) would replace {key} ({path}); "
                                    "change paths.* or the experiment name")
        for folder in owned_dirs(cfg):
            if _inside(path, folder):
                raise PipelineError(f"config: {key} ({path}) lies inside {folder}, which the pipeline writes; "
                                    "move the file or change paths.*")


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser().resolve(strict=False)))


def _same_file(a: Path, b: Path) -> bool:
    """Equal after resolving links, or the same inode (a hard link)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return _resolved(path).is_relative_to(_resolved(folder))


# ----------------------------------------------------------------------------- lock


@contextlib.contextmanager
def experiment_lock(cfg: ExperimentConfig) -> Iterator[Path]:
    """Hold a lock on <paths.work>/<exp>/ for the block; a second process on the same experiment
    is refused with one line naming the holder's pid. The lock is an flock on the folder itself:
    no file is written for it, and the kernel drops it when its process dies, so a killed run
    never leaves a stale lock behind."""
    path = work_dir(cfg)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise PipelineError(f"cannot lock {path}: {e.strerror or e}") from None
    try:
        _take(fd, path, cfg.experiment)
        yield path
    finally:
        os.close(fd)  # closing releases the flock


def _take(fd: int, path: Path, experiment: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise PipelineError(f"cannot lock {path}: {e.strerror or e}") from None
        holder = _holder(fd) or "unknown"
        raise PipelineError(f"experiment {experiment!r} is in use by process {holder} (it holds a lock on "
                            f"{path}); wait for it to finish or stop it") from None


def _holder(fd: int) -> Optional[str]:
    """The pid holding an flock on the file of `fd`, from /proc/locks (Linux); None elsewhere."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and inode in fields and "->" not in fields:
            return fields[fields.index(inode) - 1]
    return None


def save_resolved(cfg: ExperimentConfig, directory: Path, commit: Optional[Commit] = None) -> Path:
    """directory/config.yaml, written at once or staged in `commit`."""
    path = Path(directory) / CONFIG_FILE
    return commit.write_text(path, config_yaml(cfg)) if commit else write_text(path, config_yaml(cfg))
