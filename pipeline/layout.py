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

from .config import ExperimentConfig, backbone_refs, config_yaml, expand_env, ref_key
from .errors import PipelineError
from .fileio import Commit, write_text
from .names import METHODS, pretrained_name

CONFIG_FILE = "config.yaml"   # the resolved config beside every output it produced


# ----------------------------------------------------------------------------- paths
#
# Every path a stage writes comes from `under`: its root (paths.*) expanded (${VAR}, ~) and
# resolved, every component, links included; the same resolved path is checked (check_layout) and
# written, so a check and a write can never mean two places.

def root(cfg: ExperimentConfig, key: str) -> Path:
    """paths.<key>, expanded (${VAR}, then ~) and resolved to an absolute path without links."""
    return _resolved(Path(expand_env(getattr(cfg.paths, key), f"paths.{key}")))


def under(cfg: ExperimentConfig, key: str, *parts: str) -> Path:
    """<paths.key>/<parts>, resolved; refused when a link below the root leads out of it."""
    base = root(cfg, key)
    path = _resolved(base.joinpath(*parts))
    if not path.is_relative_to(base):
        raise PipelineError(f"{base.joinpath(*parts)} is a link to {path}, outside paths.{key} ({base}); "
                            "the pipeline writes only inside its folders: remove the link")
    return path


def work_dir(cfg: ExperimentConfig) -> Path:
    return under(cfg, "work", cfg.experiment)


def prepared_dir(cfg: ExperimentConfig) -> Path:
    return under(cfg, "work", cfg.experiment, "prepared")


def work_config_file(cfg: ExperimentConfig) -> Path:
    """<paths.work>/<exp>/config.yaml, the folds stage's resolved config."""
    return under(cfg, "work", cfg.experiment, CONFIG_FILE)


def folds_paths(cfg: ExperimentConfig) -> tuple[Path, Path]:
    """(folds.csv, folds.json)."""
    return under(cfg, "work", cfg.experiment, "folds.csv"), under(cfg, "work", cfg.experiment, "folds.json")


def pseudo_dir(cfg: ExperimentConfig) -> Path:
    return under(cfg, "work", cfg.experiment, "pseudo")


def round_paths(cfg: ExperimentConfig, round_: int) -> tuple[Path, Path]:
    """(r<N>.csv, r<N>.json) of pseudo-label round N."""
    return pseudo_dir(cfg) / f"r{round_}.csv", pseudo_dir(cfg) / f"r{round_}.json"


def pretrained_root(cfg: ExperimentConfig) -> Path:
    return under(cfg, "work", cfg.experiment, "pretrained")


def pretrained_dir(cfg: ExperimentConfig, name: str) -> Path:
    """The pretrain stage's backbone folder, what `backbone: pretrained:<name>` loads."""
    return under(cfg, "work", cfg.experiment, "pretrained", name)


def experiment_models_dir(cfg: ExperimentConfig) -> Path:
    return under(cfg, "models", cfg.experiment)


def _round_parts(round_: int) -> tuple[str, ...]:
    return () if round_ == 0 else ("rounds", f"r{round_}")


def models_dir(cfg: ExperimentConfig, round_: int = 0) -> Path:
    return under(cfg, "models", cfg.experiment, *_round_parts(round_))


def model_dir(cfg: ExperimentConfig, name: str, round_: int = 0) -> Path:
    return under(cfg, "models", cfg.experiment, *_round_parts(round_), name)


def ensembles_dir(cfg: ExperimentConfig, round_: int = 0) -> Path:
    return under(cfg, "models", cfg.experiment, *_round_parts(round_), "ensembles")


def submission_path(cfg: ExperimentConfig, method: Optional[str] = None) -> Path:
    """submissions/<exp>.csv (the submitted method) or submissions/<exp>_<method>.csv (experiment
    names never end in _<method>, names.check_experiment_name, so two experiments never share one)."""
    stem = cfg.experiment if method is None else f"{cfg.experiment}_{method}"
    return under(cfg, "submissions", f"{stem}.csv")


def reports_dir(cfg: ExperimentConfig) -> Path:
    return under(cfg, "reports", cfg.experiment)


def data_dir(cfg: ExperimentConfig) -> Path:
    return _resolved(Path(expand_env(cfg.data.dir, "data.dir")))


def input_files(cfg: ExperimentConfig) -> dict[str, Path]:
    """Every file the stages read that the user owns: {config key: path}."""
    base = data_dir(cfg)
    out = {"data.train": base / cfg.data.train, "data.test": base / cfg.data.test}
    sample = getattr(cfg.data, "sample_submission", None)
    if sample:
        out["data.sample_submission"] = base / sample
    return out


# ----------------------------------------------------------------------------- outputs vs inputs


def stage_outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    """{what: resolved folder or file} of every stage's own outputs; no two may share a place."""
    csv_path, json_path = folds_paths(cfg)
    out = {"the prepared data": prepared_dir(cfg), "the folds": csv_path, "the folds record": json_path,
           "the folds' config.yaml": work_config_file(cfg),
           "the pseudo labels": pseudo_dir(cfg), "the pretrained backbones": pretrained_root(cfg),
           "the report": reports_dir(cfg), "the submission": submission_path(cfg)}
    out.update({f"the {m} submission": submission_path(cfg, m) for m in METHODS})
    for r in range(cfg.pseudo.rounds + 1 if cfg.pseudo.enabled else 1):
        where = "" if r == 0 else f" of pseudo-label round {r}"
        out[f"the ensembles{where}"] = ensembles_dir(cfg, r)
        out.update({f"model {m.name!r}{where}": model_dir(cfg, m.name, r) for m in cfg.models})
    return out


def owned_dirs(cfg: ExperimentConfig) -> list[Path]:
    """Folders the pipeline writes anything into (and may replace files in)."""
    return [prepared_dir(cfg), pseudo_dir(cfg), pretrained_root(cfg), experiment_models_dir(cfg), reports_dir(cfg)]


def owned_files(cfg: ExperimentConfig) -> list[Path]:
    """Single files the pipeline writes outside its owned folders."""
    csv_path, json_path = folds_paths(cfg)
    return ([csv_path, json_path, work_config_file(cfg), submission_path(cfg), lock_file(cfg)] + [submission_path(cfg, m) for m in METHODS])


def check_layout(cfg: ExperimentConfig, config_path: Optional[Path]) -> None:
    """Refuse, before anything is written, a config under which two stages would write into one
    place, some stage would write over or into the place of a file it reads (an input file, the
    config file itself), or a stage would read a backbone from what it is about to replace."""
    check_outputs_apart(cfg)
    check_outputs_spare_inputs(cfg, config_path)
    check_backbones_spared(cfg)


def check_outputs_apart(cfg: ExperimentConfig) -> None:
    """No stage output is, or lies inside, another stage's output (paths.* pointing at one folder,
    a model named after a folder of the layout, a link)."""
    items = list(stage_outputs(cfg).items())
    for i, (what, path) in enumerate(items):
        for other, place in items[i + 1:]:
            if path == place or path.is_relative_to(place) or place.is_relative_to(path):
                raise PipelineError(f"config: {what} ({path}) and {other} ({place}) would share a place; "
                                    "give paths.work, paths.models, paths.reports and paths.submissions "
                                    "folders of their own")


def check_outputs_spare_inputs(cfg: ExperimentConfig, config_path: Optional[Path]) -> None:
    """No output lands on or around an input file or the config file."""
    inputs = dict(input_files(cfg))
    if config_path is not None:
        inputs["the config file"] = Path(config_path)
    files, folders = owned_files(cfg), owned_dirs(cfg)   # resolved once, checked against every input
    for key, path in inputs.items():
        for out in files:
            if _same_file(path, out):
                raise PipelineError(f"config: an output ({out}) would replace {key} ({path}); "
                                    "change paths.* or the experiment name")
        for folder in folders:
            if _inside(path, folder):
                raise PipelineError(f"config: {key} ({path}) lies inside {folder}, which the pipeline writes; "
                                    "move the file or change paths.*")


def check_backbones_spared(cfg: ExperimentConfig) -> None:
    """A backbone named by its folder is never inside what the stage reading it replaces: the
    pretrain stage's own outputs for pretrain.backbone, the models' folders for a model's."""
    reads = []
    if cfg.pretrain is not None and cfg.pretrain.backbone:
        reads.append(("pretrain.backbone", cfg.pretrain.backbone, pretrained_root(cfg)))
    for m in cfg.models:
        for key, value in backbone_refs(m):
            reads.append((f"models.{m.name}.{ref_key(key)}", value, experiment_models_dir(cfg)))
    for key, value, written in reads:
        if isinstance(value, str) and pretrained_name(value) is None and Path(value).expanduser().exists():
            if _inside(Path(value), written):
                raise PipelineError(f"config: {key}={value!r} lies inside {written}, which that stage replaces; "
                                    "copy the backbone elsewhere or use pretrained:<name>")


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


def lock_file(cfg: ExperimentConfig) -> Path:
    """The experiment's lock in the submissions folder, which other experiments share."""
    return under(cfg, "submissions", f".{cfg.experiment}.lock")


def lock_targets(cfg: ExperimentConfig) -> list[Path]:
    """What the experiment lock holds: the experiment's folder under paths.work, paths.models and
    paths.reports, and its lock file beside the submissions: every root it writes, whichever
    paths point there."""
    found = [work_dir(cfg), experiment_models_dir(cfg), reports_dir(cfg), lock_file(cfg)]
    return sorted(set(found))   # one order for every process; a place named twice is locked once


@contextlib.contextmanager
def experiment_lock(cfg: ExperimentConfig) -> Iterator[Path]:
    """Hold a lock on every place the experiment writes (lock_targets) for the block; a second
    process on the same experiment is refused with one line naming the holder's pid. Each lock is
    an flock, which the kernel drops when its process dies, so a killed run never leaves a stale
    lock behind."""
    with contextlib.ExitStack() as stack:
        for path in lock_targets(cfg):
            stack.enter_context(_locked(path, cfg.experiment))
        yield work_dir(cfg)


@contextlib.contextmanager
def _locked(path: Path, experiment: str) -> Iterator[None]:
    """An flock on the folder `path` (made if missing) or, for a .lock file, on that file."""
    try:
        if path.suffix == ".lock":
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        else:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise PipelineError(f"cannot lock {path}: {e.strerror or e}") from None
    try:
        _take(fd, path, experiment)
        yield
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
