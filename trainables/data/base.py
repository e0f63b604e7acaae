"""What every dataset is to the trainer: labelled items, class-disjoint halves, a guarded test half.

A DML benchmark splits by class (docs/protocol.md): the training half is used for everything that
chooses (search, selection, retrain); the test half is opened once, by the test stage. The
guard lives here, in the one method every image access goes through, so no loader can forget it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def user_cache_dir() -> Path:
    """Where generated or decoded data is kept between runs: $DMLTUNE_CACHE, else ~/.cache/dmltune."""
    env = os.environ.get("DMLTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dmltune"


class TestAccessError(RuntimeError):
    """Raised when code before the test stage asks for images of a test class."""


class InMemoryImages(Dataset):
    """Images already decoded into one uint8 tensor [N, C, H, W]: the trainer batches it by slicing.

    `labels` are the dataset's class ids (not remapped). Items come out as floats in [0, 1].
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], but got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255), int(self.labels[i])


class DMLDataset(ABC):
    """A benchmark's items, their class ids and its train/test class halves.

    Subclasses provide `labels` (class id per item), `train_classes`, `test_classes` and
    `_load(indices, train)`, which builds a torch Dataset of those items (train=True: with
    training augmentation). Callers never use `_load`; they call `subset`.
    """

    name: str
    channels: int = 3
    labels: np.ndarray
    train_classes: np.ndarray
    test_classes: np.ndarray
    # In-Shop style retrieval: the test half is a query set searched against a gallery set
    # (item indices). None means every test item queries all the others.
    test_query: np.ndarray | None = None
    test_gallery: np.ndarray | None = None

    _test_unlocked: bool = False

    @abstractmethod
    def _load(self, indices: np.ndarray, train: bool) -> Dataset:
        """A torch Dataset over these items yielding (float image [C, H, W], class id)."""

    def subset(self, classes: np.ndarray | list[int], train: bool = False) -> Dataset:
        """Every item of `classes`, refusing test classes unless the test stage opened them."""
        classes = np.asarray(classes)
        leaked = np.intersect1d(classes, self.test_classes)
        if len(leaked) and not self._test_unlocked:
            raise TestAccessError(
                f"{self.name}: {len(leaked)} test classes (e.g. {leaked[:5].tolist()}) were requested "
                "before the test stage. Search, selection and retrain use training classes only; "
                "only the test stage may open the test half (docs/protocol.md)."
            )
        indices = np.flatnonzero(np.isin(self.labels, classes))
        return self._load(indices, train)

    def items(self, indices: np.ndarray, train: bool = False) -> Dataset:
        """Items by index (In-Shop query/gallery), under the same test guard as `subset`."""
        indices = np.asarray(indices)
        if not self._test_unlocked and np.isin(self.labels[indices], self.test_classes).any():
            raise TestAccessError(f"{self.name}: test items were requested before the test stage (docs/protocol.md).")
        return self._load(indices, train)

    @contextlib.contextmanager
    def test_access(self) -> Iterator[None]:
        """Open the test half for the duration of the test stage only."""
        self._test_unlocked = True
        try:
            yield
        finally:
            self._test_unlocked = False

    def fingerprint_parts(self) -> dict[str, Any]:
        """What identifies the data; subclasses add their file list and sizes.

        Keys starting with "test_" describe only the test half's contents: `train_sha256_16` leaves them out.
        """
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """A stable description and hash of the data and its class halves, stored with every result."""
        halves = {
            "name": self.name,
            "items": int(len(self.labels)),
            "train_classes": [int(c) for c in self.train_classes],
            "test_classes": [int(c) for c in self.test_classes],
        }
        own = self.fingerprint_parts()
        parts = halves | own
        search_side = halves | {k: v for k, v in own.items() if not k.startswith("test_")}
        return {"name": self.name, "items": parts["items"], "sha256_16": _digest(parts),
                # What the search, selection and retrain could see: a repaired test image leaves it unchanged.
                "train_sha256_16": _digest(search_side),
                "train_classes": len(self.train_classes), "test_classes": len(self.test_classes)}


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
