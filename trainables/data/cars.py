"""Cars196 (docs/datasets.md): 196 car models, classes 1-98 train and 99-196 test.

Reads `cars_annos.mat`, a MATLAB struct array `annotations` with fields `relative_im_path`
(`car_ims/000001.jpg`, relative to the root), `bbox_x1..bbox_y2`, `class` (1..196) and `test`.
The `test` field (the classification split) and the boxes are ignored, as in Proxy-Anchor's
and PML's loaders. Class ids are the file's own, 1-based.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.data.images import FileDataset, check_root, layout_error

LAYOUT = ("<root>/cars_annos.mat (struct 'annotations': relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, "
          "class 1..196, test), <root>/car_ims/*.jpg")
LAST_TRAIN_CLASS = 98


def _scalar(value: object) -> object:
    """loadmat wraps every struct field in (nested) arrays; unwrap to the one value inside."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"expected one value, but got an array of shape {arr.shape}")
    return arr.reshape(-1)[0]


def read_annotations(path: Path) -> tuple[list[str], np.ndarray]:
    """(relative image paths, class ids) in file order."""
    from scipy.io import loadmat

    if not path.is_file():
        raise layout_error("annotation file", path, LAYOUT)
    try:
        mat = loadmat(str(path))
    except Exception as e:
        raise ValueError(f"cannot read {path} as a MATLAB file ({type(e).__name__}: {e}). Layout: {LAYOUT}.") from e
    annos = mat.get("annotations")
    names = getattr(getattr(annos, "dtype", None), "names", None) or ()
    if annos is None or not {"relative_im_path", "class"} <= set(names):
        raise ValueError(f"{path} has no struct array 'annotations' with fields relative_im_path and class "
                         f"(found variables {sorted(k for k in mat if not k.startswith('__'))}, fields {names}).")
    records = annos.reshape(-1)
    try:
        paths = [str(_scalar(r["relative_im_path"])) for r in records]
        labels = np.array([int(_scalar(r["class"])) for r in records], dtype=np.int64)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: an annotation has an unexpected relative_im_path or class ({e}).") from e
    return paths, labels


class CarsDataset(FileDataset):
    name = "cars"
    layout = LAYOUT

    def __init__(self, root: Path | None, image_size: int = 224) -> None:
        self.root = check_root(root, "Cars196", LAYOUT)
        self.image_size = image_size
        self.relpaths, self.labels = read_annotations(self.root / "cars_annos.mat")
        classes_present = np.unique(self.labels)
        self.train_classes = classes_present[classes_present <= LAST_TRAIN_CLASS]
        self.test_classes = classes_present[classes_present > LAST_TRAIN_CLASS]
        self._check()
