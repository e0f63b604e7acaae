"""Datasets by name, each with the recipe it is trained with by default (docs/datasets.md#training-recipe)."""
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
    # The training recipe (TrainConfig's fields of these names); defaults fit the from-scratch glyph CNN.
    warmup_epochs: int = 0
    freeze_bn: bool = False
    lr_schedule: str = "none"
    lr_step: int = 10
    lr_gamma: float = 0.5


def _glyphs(root: Path | None, image_size: int) -> DMLDataset:
    from trainables.data.glyphs import GlyphsDataset

    return GlyphsDataset(image_size=image_size)


def _cub(root: Path | None, image_size: int) -> DMLDataset:
    from trainables.data.cub import CUBDataset

    return CUBDataset(root, image_size)


def _cars(root: Path | None, image_size: int) -> DMLDataset:
    from trainables.data.cars import CarsDataset

    return CarsDataset(root, image_size)


def _sop(root: Path | None, image_size: int) -> DMLDataset:
    from trainables.data.sop import SOPDataset

    return SOPDataset(root, image_size)


def _inshop(root: Path | None, image_size: int) -> DMLDataset:
    from trainables.data.inshop import InShopDataset

    return InShopDataset(root, image_size)


# Real benchmarks: the official Proxy-Anchor recipe (its README; docs/datasets.md) with a ResNet-50 at 224 px,
# 512-d embeddings. Batch 120 is its ResNet-50 setting on CUB/Cars; SOP/In-Shop use its 180 (BN-Inception
# runs there; it gives no ResNet-50 recipe for them). AdamW lr 1e-4 (CUB, Cars) / 6e-4 (SOP, In-Shop).
# Its README's ResNet-50 runs: CUB --warm 5 --bn-freeze 1 --lr-decay-step 5, Cars --warm 5 --bn-freeze 1
# --lr-decay-step 10; SOP and In-Shop (BN-Inception) --warm 1 --bn-freeze 0 --lr-decay-step 20
# --lr-decay-gamma 0.25; gamma 0.5 is its default. Glyphs: no warm-up or frozen BN (nothing is pretrained)
# and a constant lr (a cosine schedule did not raise validation R@1 within 10 epochs: bench/RESULTS.md).
DATASETS: dict[str, tuple[Callable[[Path | None, int], DMLDataset], DatasetRecipe]] = {
    "glyphs": (_glyphs, DatasetRecipe(backbone="glyphcnn", image_size=32, embedding_size=64, batch_size=64,
                                      lr=1e-3, ks=(1, 2, 4, 8), needs_root=False)),
    "cub": (_cub, DatasetRecipe(backbone="resnet50", image_size=224, embedding_size=512, batch_size=120,
                                lr=1e-4, ks=(1, 2, 4, 8), needs_root=True, warmup_epochs=5, freeze_bn=True,
                                lr_schedule="step", lr_step=5)),
    "cars": (_cars, DatasetRecipe(backbone="resnet50", image_size=224, embedding_size=512, batch_size=120,
                                  lr=1e-4, ks=(1, 2, 4, 8), needs_root=True, warmup_epochs=5, freeze_bn=True,
                                  lr_schedule="step", lr_step=10)),
    "sop": (_sop, DatasetRecipe(backbone="resnet50", image_size=224, embedding_size=512, batch_size=180,
                                lr=6e-4, ks=(1, 10, 100, 1000), needs_root=True, warmup_epochs=1,
                                lr_schedule="step", lr_step=20, lr_gamma=0.25)),
    "inshop": (_inshop, DatasetRecipe(backbone="resnet50", image_size=224, embedding_size=512, batch_size=180,
                                      lr=6e-4, ks=(1, 10, 20, 30, 40, 50), needs_root=True, warmup_epochs=1,
                                      lr_schedule="step", lr_step=20, lr_gamma=0.25)),
}


def recipe(name: str) -> DatasetRecipe:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[name][1]


def build_dataset(name: str, root: str | Path | None = None, image_size: int | None = None) -> DMLDataset:
    """The named dataset; a dataset that lives on disk needs `root`, and its loader checks the layout."""
    rec = recipe(name)
    if rec.needs_root and root is None:
        raise ValueError(f"Dataset {name!r} is read from disk: give --data-root (docs/datasets.md shows the layout).")
    return DATASETS[name][0](Path(root).expanduser() if root else None, image_size or rec.image_size)
