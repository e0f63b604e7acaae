"""Shared fixtures: a tiny in-memory dataset, a quiet local Ray, a per-session glyph cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from trainables.data.base import DMLDataset, InMemoryImages  # noqa: E402


class BlobsDataset(DMLDataset):
    """Classes of noisy 8x8 blobs: learnable in a few batches, so trainer tests take seconds."""

    name = "blobs"
    channels = 1

    def __init__(self, n_classes: int = 12, per_class: int = 12, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        protos = rng.random((n_classes, 1, 8, 8))
        self.labels = np.repeat(np.arange(n_classes), per_class)
        noisy = protos[self.labels] + 0.2 * rng.standard_normal((len(self.labels), 1, 8, 8))
        self.images = torch.as_tensor((np.clip(noisy, 0, 1) * 255).astype(np.uint8))
        self.train_classes = np.arange(n_classes // 2)
        self.test_classes = np.arange(n_classes // 2, n_classes)

    def _load(self, indices: np.ndarray, train: bool) -> InMemoryImages:
        idx = torch.as_tensor(indices)
        return InMemoryImages(self.images[idx], torch.as_tensor(self.labels)[idx])


@pytest.fixture
def blobs() -> BlobsDataset:
    return BlobsDataset()


@pytest.fixture(scope="session", autouse=True)
def glyph_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated glyphs out of the user's cache unless the suite is pointed at one."""
    os.environ.setdefault("DMLTUNE_CACHE", str(tmp_path_factory.mktemp("dmltune-cache")))
