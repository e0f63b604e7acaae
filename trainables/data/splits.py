"""Validation classes drawn from the training classes only (docs/protocol.md).

Random, not contiguous, class choice: neighbouring class ids are often near-duplicates (bird
species of one family), so a contiguous block would make validation unrepresentative.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassSplit:
    """One way to hold out validation classes: train on `fit`, score on `val`."""

    fit: tuple[int, ...]
    val: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"fit": list(self.fit), "val": list(self.val)}


def splits_record(folds: Sequence[ClassSplit], test_classes: np.ndarray) -> dict[str, Any]:
    """The class ids of a run as config.json and the ledger store them: the fixed split's fit and
    validation classes, or every fold (k-fold), and the test classes."""
    split = folds[0].to_dict() if len(folds) == 1 else {"folds": [f.to_dict() for f in folds]}
    return split | {"test": [int(c) for c in test_classes]}


def _checked(train_classes: np.ndarray) -> np.ndarray:
    classes = np.unique(np.asarray(train_classes, dtype=np.int64))
    if len(classes) < 4:
        raise ValueError(f"Need at least 4 training classes to hold out validation classes, but got {len(classes)}.")
    return classes


def fixed_split(train_classes: np.ndarray, val_fraction: float = 0.1, seed: int = 0) -> ClassSplit:
    """A seeded random `val_fraction` of the training classes (at least 2) become validation classes."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), but got {val_fraction}.")
    classes = _checked(train_classes)
    n_val = min(max(2, round(val_fraction * len(classes))), len(classes) - 2)
    val = np.random.default_rng(seed).choice(classes, n_val, replace=False)
    fit = np.setdiff1d(classes, val)
    return ClassSplit(tuple(int(c) for c in fit), tuple(int(c) for c in np.sort(val)))


def kfold_splits(train_classes: np.ndarray, folds: int = 10, seed: int = 0) -> list[ClassSplit]:
    """K disjoint validation folds covering every training class once, by seeded random assignment."""
    classes = _checked(train_classes)
    if not 2 <= folds <= len(classes) // 2:
        raise ValueError(f"folds must be in [2, {len(classes) // 2}] for {len(classes)} classes, but got {folds}.")
    shuffled = np.random.default_rng(seed).permutation(classes)
    return [ClassSplit(tuple(int(c) for c in np.setdiff1d(classes, val)), tuple(int(c) for c in np.sort(val)))
            for val in np.array_split(shuffled, folds)]
