"""bench/gpu_check.sh's CPU-safe part runs, so the script a lent GPU runs has not rotted in between."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


ROWS = ["| cuda tests", "| trainer resnet18@32px fp32 (CPU), images/s", "| data path 32 px on cpu, images/s"]


def smoke(tmp_path: Path, *extra: str) -> list[str]:
    """The table rows of `bench/gpu_check.sh --smoke`, which must exit 0."""
    env = os.environ | {"PYTHON": sys.executable, "DMLTUNE_CACHE": str(tmp_path), "RAY_ADDRESS": "local"}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--smoke", *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert all("FAILED" not in row for row in rows)
    return [row.split(" | ")[0] for row in rows]


def test_the_gpu_check_runs_its_rows_on_the_cpu(tmp_path) -> None:
    assert smoke(tmp_path, "--skip-trials") == ROWS


@pytest.mark.slow  # two small searches: 4 minutes on this shared 2-core machine
def test_the_gpu_check_runs_the_four_trials_row_on_the_cpu(tmp_path) -> None:
    assert smoke(tmp_path) == [*ROWS, "| 4 CPU trials, images/s (sum)"]
