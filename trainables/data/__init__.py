"""Datasets by name, each with the recipe it is trained with by default (DESIGN §2, §8)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainables.data.base import DMLDataset


@dataclass(frozen=True)
class DatasetRecipe:
    """Per-dataset defaults: the CLI uses them where the user gives no flag."""

    backbone: str
    image_size: int
    embedding_size: int
    batch_size: int
    lr: float
    ks: tuple[int, ...]
    needs_root: bool


def _glyphs(root: Path | None, image_size: int) -> DMLDataset:
    from trainables.data.glyphs import GlyphsDataset

    return GlyphsDataset(image_size=image_size)


DATASETS: dict[str, tuple[Callable[[Path | None, int], DMLDataset], DatasetRecipe]] = {
    "glyphs": (_glyphs, DatasetRecipe(backbone="glyphcnn", image_size=32, embedding_size=64, batch_size=64,
                                      lr=1e-3, ks=(1, 2, 4, 8), needs_root=False)),
}


def recipe(name: str) -> DatasetRecipe:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[name][1]


def build_dataset(name: str, root: str | Path | None = None, image_size: int | None = None) -> DMLDataset:
    """The named dataset; a dataset that lives on disk needs `root`, and its loader checks the layout."""
    rec = recipe(name)
    if rec.needs_root and root is None:
        raise ValueError(f"Dataset {name!r} is read from disk: give --data-root (DESIGN §8 shows the layout).")
    return DATASETS[name][0](Path(root).expanduser() if root else None, image_size or rec.image_size)
