"""Stanford Online Products (docs/datasets.md): Ebay_train.txt trains (11,318 classes), Ebay_test.txt tests (11,316).

Both files: a header `image_id class_id super_class_id path`, then rows like
`1 1 1 bicycle_final/111085122871_0.JPG` with the path relative to the root. Class ids are the
files' own (1..22634, the halves disjoint); super-classes are not used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.data.images import FileDataset, check_root, read_lines

LAYOUT = ("<root>/Ebay_train.txt and <root>/Ebay_test.txt (header 'image_id class_id super_class_id path', "
          "rows '1 1 1 bicycle_final/111085122871_0.JPG'), images at <root>/<path>")


def read_list(path: Path) -> tuple[list[str], np.ndarray]:
    lines = read_lines(path, LAYOUT)
    if not lines or lines[0].split()[:2] != ["image_id", "class_id"]:
        raise ValueError(f"{path}: expected the header 'image_id class_id super_class_id path', "
                         f"but got {lines[0] if lines else 'an empty file'!r}.")
    paths, labels = [], []
    for n, line in enumerate(lines[1:], 2):
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit():
            raise ValueError(f"{path}:{n}: expected 'image_id class_id super_class_id path', but got {line!r}.")
        paths.append(parts[3])
        labels.append(int(parts[1]))
    return paths, np.array(labels, dtype=np.int64)


class SOPDataset(FileDataset):
    name = "sop"
    layout = LAYOUT

    def __init__(self, root: Path | None, image_size: int = 224) -> None:
        self.root = check_root(root, "Stanford Online Products", LAYOUT)
        self.image_size = image_size
        train_paths, train_labels = read_list(self.root / "Ebay_train.txt")
        test_paths, test_labels = read_list(self.root / "Ebay_test.txt")
        self.relpaths = train_paths + test_paths
        self.labels = np.concatenate([train_labels, test_labels])
        self.train_classes = np.unique(train_labels)
        self.test_classes = np.unique(test_labels)
        self._check()
