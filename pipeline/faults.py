"""Fault injection for the reliability tests: named points where a test kills the process or fails a write.

Off unless one of these environment variables is set; then each point costs one environment lookup:

  PIPELINE_TEST_KILL_AT=<glob>    SIGKILL this process at the first point whose label matches
  PIPELINE_TEST_ENOSPC_AT=<glob>  raise OSError(ENOSPC) there instead (a full disk)

Points: every atomic write (io.atomic_path) calls `point("write:<path>")` once the data is in the
temporary file and before it is renamed over <path>. <path> is the path as the caller gave it, so a
test matches with a glob such as `write:*/lr/fold1/val_pred.npy` (`*` also matches `/`). Killing
there is a kill inside a fold (model files, fold matrices), while writing a matrix or a manifest,
or during the ensemble, depending on the file named.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal

KILL_AT = "PIPELINE_TEST_KILL_AT"
ENOSPC_AT = "PIPELINE_TEST_ENOSPC_AT"


def point(label: str) -> None:
    """Kill the process or raise a disk-full error here if a test asked for it (see module doc)."""
    kill = os.environ.get(KILL_AT)
    if kill and fnmatch.fnmatchcase(label, kill):
        os.kill(os.getpid(), signal.SIGKILL)
    full = os.environ.get(ENOSPC_AT)
    if full and fnmatch.fnmatchcase(label, full):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
