"""A search that left nothing to select ends with a few lines saying why, not a traceback.

When every trial failed, the first one's error (the last line of the log Ray Tune writes for it)
is quoted and its log named: the same bug usually fails them all, and its traceback is in that file.
"""
from __future__ import annotations

import pandas as pd
import pyarrow.fs

from results.select import ranked

ERROR_FILE = "error.txt"  # the error log Ray Tune writes into a failed trial's directory


class SearchFailed(RuntimeError):
    """No trial can be selected; the message quotes why and where to look."""


def error_line(text: str) -> str:
    """The exception line of a logged traceback: its last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(its error log is empty)"


def read_log(location: str) -> str | None:
    """The text at a local path or storage URI, or None when it cannot be read."""
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(location) if "://" in location else \
            (pyarrow.fs.LocalFileSystem(), location)
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def check_selectable(trials: pd.DataFrame, experiment: str) -> None:
    """Raise SearchFailed unless some trial can be selected; `experiment` is Ray's experiment directory."""
    if not ranked(trials).empty:
        return
    failed = trials[trials["state"] == "failed"].sort_values("number")
    if len(failed) < len(trials) or failed.empty:
        raise SearchFailed(f"no trial of {len(trials)} can be selected: each failed, diverged or did not finish "
                           f"(trials.parquet has each one's state). Trial logs: {experiment}/<trial id>/{ERROR_FILE}.")
    first = failed.iloc[0]
    log = f"{experiment}/{first['ray_trial_id']}/{ERROR_FILE}"
    text = read_log(log)
    quoted = error_line(text) if text is not None else "(its error log could not be read)"
    raise SearchFailed(f"all {len(trials)} trials failed; the first (trial {int(first['number'])}) with:\n"
                       f"  {quoted}\nIts log: {log}")
