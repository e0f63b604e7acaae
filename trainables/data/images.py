"""What the four on-disk benchmarks share: image files read by path, the official transforms, a fingerprint.

Each loader (cub.py, cars.py, sop.py, inshop.py) only parses its list files into root-relative
paths and class ids (docs/datasets.md); everything that touches image files lives here, so the four
behave the same: the same Proxy-Anchor transforms, the same error for a bad file, the same
fingerprint.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.data.base import DMLDataset

# torchvision's ImageNet statistics: what the pretrained backbones were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(OSError):
    """An image file is missing, unreadable or corrupt; the message names the file.

    A subclass of OSError whose constructor takes one message, so a DataLoader worker re-raises
    it in the main process as this same type (torch rebuilds worker exceptions from the message).
    """


def train_transform(image_size: int) -> Callable[[Any], torch.Tensor]:
    """Proxy-Anchor's training augmentation: RandomResizedCrop + horizontal flip, ImageNet-normalised."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(image_size: int) -> Callable[[Any], torch.Tensor]:
    """Proxy-Anchor's evaluation view: Resize(256) + CenterCrop(224), scaled for other sizes."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def load_rgb(path: str | os.PathLike[str]) -> Any:
    """The decoded RGB PIL image at `path`; any failure becomes an ImageReadError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # decodes now, so a truncated file fails here, not later
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


class ImageFiles(Dataset):
    """Image files by path with their class ids; yields (float image [3, H, W], class id).

    Paths are kept as strings (cheap to pickle into DataLoader workers and Ray trials);
    `labels` is what the trainer reads to build batches without opening any file.
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, transform: Callable[[Any], torch.Tensor]) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels.")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[i])), int(self.labels[i])


def layout_error(what: str, path: Path, layout: str) -> FileNotFoundError:
    """The error for a missing root or list file: what was expected, where, and the layout."""
    return FileNotFoundError(f"{what} not found: expected {path}. Layout: {layout} (docs/datasets.md).")


def read_lines(path: Path, layout: str) -> list[str]:
    """Non-empty lines of a list file, or a FileNotFoundError naming it and the layout."""
    if not path.is_file():
        raise layout_error("list file", path, layout)
    with open(path, encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def check_root(root: Path | None, name: str, layout: str) -> Path:
    if root is None:
        raise ValueError(f"{name} is read from disk: give --data-root. Layout: {layout} (docs/datasets.md).")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error(f"{name} root directory", root, layout)
    return root


class FileDataset(DMLDataset):
    """A benchmark of image files: `root`, root-relative `relpaths`, `labels`; subclasses parse the lists.

    Subclasses set `name`, `layout` (one line for error messages), `root`, `relpaths`, `labels`,
    `train_classes`, `test_classes` (and In-Shop its query/gallery indices), then call `_check()`.
    """

    channels = 3
    layout: str
    root: Path
    relpaths: list[str]
    image_size: int
    _fingerprint: dict[str, Any] | None = None

    def _check(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.train_classes = np.unique(np.asarray(self.train_classes, dtype=np.int64))
        self.test_classes = np.unique(np.asarray(self.test_classes, dtype=np.int64))
        if len(self.relpaths) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.relpaths)} images but {len(self.labels)} labels.")
        if not len(self.train_classes) or not len(self.test_classes):
            raise ValueError(f"{self.name} at {self.root}: the train half has {len(self.train_classes)} classes "
                             f"and the test half {len(self.test_classes)}; both must be non-empty.")
        both = np.intersect1d(self.train_classes, self.test_classes)
        if len(both):
            raise ValueError(f"{self.name} at {self.root}: classes {both[:5].tolist()} are in both the train and "
                             "the test half; the protocol needs class-disjoint halves (docs/protocol.md).")

    def _load(self, indices: np.ndarray, train: bool) -> ImageFiles:
        tf = train_transform(self.image_size) if train else eval_transform(self.image_size)
        prefix = os.path.join(str(self.root), "")  # plain string joins: SOP's 60k paths in ~0.1 s
        return ImageFiles([prefix + self.relpaths[i] for i in indices], self.labels[indices], tf)

    def fingerprint_parts(self) -> dict[str, Any]:
        """Hash of the root-relative file list with class ids, and the images' total size from stat, per half.

        Only `os.stat` touches the images (no file is opened, so the test half stays closed and SOP's
        120k files take about a second); a listed file that is missing is an error here, at the start
        of a run, rather than hours later in a DataLoader worker.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            size, missing = {"train_bytes": 0, "test_bytes": 0}, []
            in_test = np.isin(self.labels, self.test_classes).tolist()
            for rel, label, test in zip(self.relpaths, self.labels.tolist(), in_test):
                h.update(f"{rel}\t{label}\n".encode())
                try:
                    size["test_bytes" if test else "train_bytes"] += os.stat(self.root / rel).st_size
                except FileNotFoundError:
                    missing.append(rel)
            if missing:
                raise FileNotFoundError(f"{self.name}: {len(missing)} listed images are missing under {self.root}, "
                                        f"e.g. {self.root / missing[0]}. Layout: {self.layout} (docs/datasets.md).")
            self._fingerprint = {"files_sha256": h.hexdigest(), **size, "files": len(self.relpaths)}
            if self.test_query is not None and self.test_gallery is not None:
                self._fingerprint["test_query"] = int(len(self.test_query))
                self._fingerprint["test_gallery"] = int(len(self.test_gallery))
        return dict(self._fingerprint)
