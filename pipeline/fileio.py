"""Atomic writers (one file, or a stage's outputs committed together), file hashes, checked
readers of the JSON and .npy files the stages pass between them. Input tables: see readers.py."""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from . import faults
from .errors import PipelineError, first_line

# ----------------------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path, what: str = "file") -> bytes:
    """The bytes of a user's file; missing or unreadable is one PipelineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} not found: {path}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise PipelineError(f"cannot read {what} {path}: {e.strerror or e}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise PipelineError(f"file not found: {path}") from None
    except OSError as e:
        raise PipelineError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def sha256_strings(items: list[str]) -> str:
    """Hash of a list of strings that cannot collide across different splits into items."""
    return sha256_bytes(json.dumps(list(items), ensure_ascii=False).encode())


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A run killed at any moment leaves either the old file or the new one, never a torn file (at
    worst a hidden `.<name>.<host>.<pid>.*.tmp` beside it, which nothing reads and the next write
    of <name> removes once that process is gone). A failed write (disk full, read-only
    directory) removes the temporary file, keeps the old file and raises one PipelineError.
    faults.point("write:<path>") runs between the two: where the tests kill or fail a write.
    """
    path = Path(path)
    tmp_path = _temp_beside(path)
    try:
        with _write_errors(path):
            yield tmp_path
        _seal(tmp_path, path)
        _rename(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """An OSError while filling a temporary file (disk full, quota) is one line naming `path`."""
    try:
        yield
    except OSError as e:
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None


def _temp_beside(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
    return Path(tmp)


def _seal(tmp_path: Path, path: Path) -> None:
    """Make the temporary file durable with the mode open() would give `path`; the fault point
    sits here, where a real full disk would show."""
    try:
        faults.point(f"write:{path}")
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _file_mode(path))  # mkstemp makes 0600; give the mode open() would
    except OSError as e:
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None


def _rename(tmp_path: Path, path: Path) -> None:
    try:
        os.replace(tmp_path, path)
    except OSError as e:
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
    _fsync_dir(path.parent)


class Commit:
    """A stage's outputs, written together or not at all.

    Each `write_*` stages its file beside its final name; nothing visible changes until the block
    of `committed()` ends without error, when every file is renamed into place in the order it was
    staged (so the file staged last, the stage's record, lands last). An error while staging (bad
    input found late, a full disk) removes every staged file and leaves all earlier outputs as
    they were.
    """

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []

    def write_with(self, path: Path, writer: Callable[[Path], None]) -> Path:
        path = Path(path)
        if any(final == path for _, final in self.staged):
            raise ValueError(f"{path} staged twice in one commit")
        tmp = _temp_beside(path)
        self.staged.append((tmp, path))
        with _write_errors(path):
            writer(tmp)
        _seal(tmp, path)
        return path

    def write_bytes(self, path: Path, data: bytes) -> Path:
        return self.write_with(path, lambda t: t.write_bytes(data))

    def write_text(self, path: Path, text: str) -> Path:
        return self.write_bytes(path, text.encode("utf-8"))

    def write_json(self, path: Path, obj: Any) -> Path:
        return self.write_text(path, json_text(obj))

    def write_npy(self, path: Path, array: np.ndarray) -> Path:
        return self.write_with(path, lambda t: _save_npy(t, array))

    def write_csv(self, path: Path, df: pd.DataFrame) -> Path:
        return self.write_with(path, lambda t: _save_csv(t, df))

    def sha256(self, path: Path) -> str:
        """sha256 of a file staged in this commit (read from its temporary file)."""
        for tmp, final in self.staged:
            if final == Path(path):
                return sha256_file(tmp)
        raise KeyError(path)

    def _publish(self) -> None:
        for i, (tmp, path) in enumerate(self.staged):
            _rename(tmp, path)
            self.staged[i] = (path, path)

    def _discard(self) -> None:
        for tmp, path in self.staged:
            if tmp != path:
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def committed() -> Iterator[Commit]:
    """`with committed() as c: c.write_json(...); ...`: see Commit."""
    commit = Commit()
    try:
        yield commit
        commit._publish()
    finally:
        commit._discard()


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files for `path` left by killed writers on this host (a killed checkpoint
    write can leave hundreds of MB). A temp whose writer still runs, or ran on another host sharing
    the directory, is left alone."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:-len(".tmp")].rsplit(".", 2)
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue
        if not _alive(int(parts[1])):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@functools.lru_cache(maxsize=None)
def _host() -> str:
    return socket.gethostname().replace(os.sep, "_") or "host"


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    # Setting and restoring is the only portable way to read it; done once per process.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (power loss); best effort, some file systems refuse."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(path: Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: Path, data: bytes) -> Path:
    return write_with(path, lambda t: t.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def create_text(path: Path, text: str) -> Path:
    """Write a new file atomically, never replacing one: the finished temporary file is linked to
    `path`, which fails where `path` exists, even if another process made it a moment ago."""
    path = Path(path)
    tmp_path = _temp_beside(path)
    try:
        with _write_errors(path):
            tmp_path.write_bytes(text.encode("utf-8"))
        _seal(tmp_path, path)
        try:
            os.link(tmp_path, path)
        except FileExistsError:
            raise PipelineError(f"{path} exists, and it is never overwritten") from None
        except OSError as e:
            raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json_text(obj))


def _save_npy(tmp: Path, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _save_csv(tmp: Path, df: pd.DataFrame) -> None:
    df.to_csv(tmp, index=False, lineterminator="\n")


def write_npy(path: Path, array: np.ndarray) -> Path:
    return write_with(path, lambda t: _save_npy(t, array))


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    return write_with(path, lambda t: _save_csv(t, df))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise PipelineError(f"cannot read {path}: {e.strerror or e}") from None


def read_npy(path: Path) -> np.ndarray:
    """Load one array with pickles refused; a truncated, padded or foreign file is one clear error.

    The header is checked before any data is read: an object dtype (pickled Python objects, which
    run code when unpickled) is refused outright, and the data must be exactly as long as the
    header's shape says, so a crafted header cannot make us allocate more than the file holds.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, dtype = _npy_header(f, path)
            data_start = f.tell()
        size = os.path.getsize(path)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size - data_start != expected:
            what = "truncated" if size - data_start < expected else "longer than its header says"
            raise PipelineError(f"{path}: not a readable .npy matrix ({what}: {size - data_start} data bytes, "
                                f"shape {shape} of {dtype} needs {expected})")
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PipelineError(f"file not found: {path}") from None
    except (ValueError, OSError, EOFError) as e:
        raise PipelineError(f"{path}: not a readable .npy matrix ({str(e).splitlines()[0]})") from None


def _npy_header(f, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
    except ValueError:
        what = "empty file" if f.tell() == 0 and not f.read(1) else "no .npy signature; other formats are refused"
        raise PipelineError(f"{path}: not a readable .npy matrix ({what})") from None
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = npy.read_array_header_2_0(f)
    else:
        raise PipelineError(f"{path}: not a readable .npy matrix (format version {version[0]}.{version[1]})")
    if dtype.hasobject:
        raise PipelineError(f"{path}: refused: it holds pickled Python objects (dtype {dtype}); "
                            "only numeric matrices are loaded")
    return shape, dtype


def safe_load_safetensors(path: Path, device: str = "cpu") -> dict:
    """Tensors of a .safetensors file (no code runs on load); a damaged or foreign file is one
    PipelineError naming it. Returns {name: torch.Tensor}."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PipelineError(f"{path}: not a valid safetensors file ({first_line(e)})") from None
