"""CUB-200-2011 (docs/datasets.md): 200 bird species, classes 1-100 train and 101-200 test.

Reads `images.txt` (`<image id> <path under images/>`) and `image_class_labels.txt`
(`<image id> <class 1..200>`). `train_test_split.txt` is ignored: DML splits by class
(Proxy-Anchor's and PML's loaders do the same). Class ids are CUB's own, 1-based.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.data.images import FileDataset, check_root, read_lines

LAYOUT = ("<root>/images.txt ('<id> <relpath>'), <root>/image_class_labels.txt ('<id> <class 1..200>'), "
          "<root>/images/NNN.Name/*.jpg; space-separated, no header")
# The first 100 classes train, the other 100 test (the papers' split).
LAST_TRAIN_CLASS = 100


def _id_table(path: Path, what: str) -> dict[int, str]:
    table: dict[int, str] = {}
    for n, line in enumerate(read_lines(path, LAYOUT), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<image id> <{what}>', but got {line!r}.")
        table[int(parts[0])] = parts[1].strip()
    return table


class CUBDataset(FileDataset):
    name = "cub"
    layout = LAYOUT

    def __init__(self, root: Path | None, image_size: int = 224) -> None:
        self.root = check_root(root, "CUB-200-2011", LAYOUT)
        self.image_size = image_size
        paths = _id_table(self.root / "images.txt", "relpath")
        classes = _id_table(self.root / "image_class_labels.txt", "class id")
        if paths.keys() != classes.keys():
            odd = sorted(paths.keys() ^ classes.keys())
            raise ValueError(f"images.txt and image_class_labels.txt under {self.root} list different image ids "
                             f"(e.g. {odd[:5]}); they must describe the same images.")
        ids = sorted(paths)
        self.relpaths = ["images/" + paths[i] for i in ids]
        try:
            self.labels = np.array([int(classes[i]) for i in ids], dtype=np.int64)
        except ValueError as e:
            raise ValueError(f"{self.root / 'image_class_labels.txt'}: a class id is not an integer ({e}).") from e
        classes_present = np.unique(self.labels)
        self.train_classes = classes_present[classes_present <= LAST_TRAIN_CLASS]
        self.test_classes = classes_present[classes_present > LAST_TRAIN_CLASS]
        self._check()
