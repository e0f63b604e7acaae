"""Files that are whole or absent: written beside their place under a temporary name, then renamed over it.

A driver stopped mid-write (Ctrl-C, a killed job) then leaves the previous file or none, never a
truncated one that a later --resume or report would read as data. It lives in trainables/ so that
every layer above (results/, search.py) can use it.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a new file name in path's directory, then rename it to `path` (one os.replace).

    The temporary name is unique, so two processes writing the same path never share a half-written file;
    it is removed if `write` fails. `write` creates the file, so it gets the usual permissions (mkstemp's
    would be owner-only, hiding a run's report from the colleagues it is meant for).
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
