"""Fault injection for the reliability tests: named points where a test kills the process or fails a write.

Off unless one of these environment variables is set; then each point costs one environment lookup:

  PIPELINE_TEST_KILL_AT=<glob>    SIGKILL this process at the first point whose label matches
  PIPELINE_TEST_ENOSPC_AT=<glob>  raise OSError(ENOSPC) there instead (a full disk)
  PIPELINE_TEST_RAISE_AT=<glob>   raise a PipelineError there (a job that fails)
  PIPELINE_TEST_KILL_ONCE_AT=<glob> with PIPELINE_TEST_KILL_ONCE_MARKER=<file>: SIGKILL the first
                                  process that gets there (a worker dying mid-job, then retried)

Points: `job:<model>/fold<k>` (`job:<model>/fold<k>/seed<s>` in a seed bag) at the start of every
job, wherever it runs (the variables reach Ray workers through the job's runtime environment); every atomic write
(fileio.atomic_path, fileio.Commit) calls `point("write:<path>")` once the data is in the temporary file
and before it is renamed over <path>. <path> is the path as the caller gave it, so a
test matches with a glob such as `write:*/lr/fold1/val_pred.npy` (`*` also matches `/`). Killing
there is a kill inside a fold (model files, fold matrices), while writing a matrix or a manifest,
or during the ensemble, depending on the file named.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal

from .errors import PipelineError

KILL_AT = "PIPELINE_TEST_KILL_AT"
ENOSPC_AT = "PIPELINE_TEST_ENOSPC_AT"
RAISE_AT = "PIPELINE_TEST_RAISE_AT"
KILL_ONCE_AT = "PIPELINE_TEST_KILL_ONCE_AT"   # <glob>; the first process to get there, and only it, dies
KILL_ONCE_MARKER = "PIPELINE_TEST_KILL_ONCE_MARKER"  # a file created by the one that dies


def point(label: str) -> None:
    """Kill the process or raise a disk-full error here if a test asked for it (see module doc)."""
    kill = os.environ.get(KILL_AT)
    if kill and fnmatch.fnmatchcase(label, kill):
        os.kill(os.getpid(), signal.SIGKILL)
    full = os.environ.get(ENOSPC_AT)
    if full and fnmatch.fnmatchcase(label, full):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    fail = os.environ.get(RAISE_AT)
    if fail and fnmatch.fnmatchcase(label, fail):
        raise PipelineError(f"injected failure at {label}")
    once = os.environ.get(KILL_ONCE_AT)
    if once and fnmatch.fnmatchcase(label, once) and _first(os.environ[KILL_ONCE_MARKER]):
        os.kill(os.getpid(), signal.SIGKILL)


def _first(marker: str) -> bool:
    """True for the one process that creates `marker` (a retried job finds it and lives)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
