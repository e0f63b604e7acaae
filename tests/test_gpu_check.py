"""bench/gpu_check.sh's CPU-safe part runs, so the script a lent GPU runs has not rotted in between."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_row_on_the_cpu(tmp_path) -> None:
    env = os.environ | {"PYTHON": sys.executable, "DMLTUNE_CACHE": str(tmp_path), "RAY_ADDRESS": "local"}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| cuda tests", "| trainer resnet18@32px fp32 (CPU), images/s",
                                                      "| data path 32 px on cpu, images/s",
                                                      "| 4 CPU trials, images/s (sum)"]
    assert all("FAILED" not in row for row in rows)
