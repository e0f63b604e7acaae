"""What a result needs to be reproduced: library versions, the code revision, the data and its splits."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.data.splits import ClassSplit, splits_record

if TYPE_CHECKING:
    from trainables.data.base import DMLDataset

_PACKAGES = ("dmltune", "torch", "torchvision", "ray", "optuna", "pytorch-metric-learning", "faiss-cpu",
             "faiss-gpu", "numpy", "pandas")


def provenance(dataset: DMLDataset, folds: Sequence[ClassSplit]) -> dict[str, Any]:
    """The record config.json and every ledger entry carry: versions, code, data fingerprint, every split's ids."""
    return {"versions": versions(), "code": code_revision(), "dataset": dataset.fingerprint(),
            "split": splits_record(folds, dataset.test_classes)}


def versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (absent ones omitted)."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def code_revision() -> dict[str, Any] | None:
    """The git commit of this checkout and whether it had uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}
