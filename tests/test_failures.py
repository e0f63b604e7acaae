"""A search that left nothing to select: a few lines saying why, quoting the first failed trial's error."""
from __future__ import annotations

import pandas as pd
import pytest

from results.failures import SearchFailed, check_selectable
from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED


def trials(states: list[str], diverged: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame({"number": range(len(states)), "ray_trial_id": [f"t{i}" for i in range(len(states))],
                         "state": states, DIVERGED: diverged, "full_budget": False,
                         f"best_{SELECTION_METRIC}": [0.5 if s != "failed" else None for s in states]})


def test_a_selectable_trial_passes() -> None:
    check_selectable(trials(["failed", "complete"], [None, None]), "/nowhere")


def test_all_failed_quotes_the_first_trials_error_line_and_names_its_log(tmp_path) -> None:
    for i, error in enumerate(["ValueError: first", "KeyError: second"]):
        (tmp_path / f"t{i}").mkdir()
        (tmp_path / f"t{i}" / "error.txt").write_text(f"Failure # 1\nTraceback (most recent call last):\n  ...\n{error}\n")
    with pytest.raises(SearchFailed) as info:
        check_selectable(trials(["failed", "failed"], [None, None]).iloc[::-1], str(tmp_path))
    message = str(info.value)
    assert "all 2 trials failed" in message and "ValueError: first" in message and "second" not in message
    assert str(tmp_path / "t0" / "error.txt") in message and "Traceback" not in message


def test_a_log_that_is_gone_is_said_so() -> None:
    with pytest.raises(SearchFailed, match="could not be read"):
        check_selectable(trials(["failed"], [None]), "/nowhere")


def test_diverged_trials_leave_nothing_to_select_and_point_at_trials_parquet() -> None:
    with pytest.raises(SearchFailed, match="trials.parquet"):
        check_selectable(trials(["complete", "failed"], ["loss became nan", None]), "/nowhere")
