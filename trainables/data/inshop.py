"""In-Shop Clothes Retrieval (docs/datasets.md): 3,997 train items; the test half is query vs gallery.

Reads `Eval/list_eval_partition.txt`: line 1 the row count, line 2 the header
`image_name item_id evaluation_status`, then whitespace-aligned rows like
`img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train` with status train, query
or gallery. A class is an item: `id_00000002` becomes class id 2 (train and test items are
disjoint, which `_check` verifies).

Where the images are: `img.zip` unpacks to a folder `img/`, and the row paths start with
`img/`. The official layout keeps it under `Img/` — the file is at `<root>/Img/img/WOMEN/...`,
which is what Proxy-Anchor's loader opens (`os.path.join(root, 'Img', image_name)`) and what
mmpretrain documents. A root with `img/` unpacked directly (`<root>/img/WOMEN/...`) is accepted
too; which one is used is decided from the first row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.data.images import FileDataset, check_root, read_lines

LAYOUT = ("<root>/Eval/list_eval_partition.txt (line 1 the count, line 2 'image_name item_id evaluation_status', "
          "rows 'img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery'), "
          "images at <root>/Img/<image_name> (or <root>/<image_name>)")
# Where an image_name may live, relative to the root: the official Img/ folder first.
IMAGE_BASES = ("Img", "")
STATUSES = ("train", "query", "gallery")


def item_class(item_id: str) -> int:
    """`id_00000002` -> 2."""
    prefix, _, number = item_id.rpartition("_")
    if prefix != "id" or not number.isdigit():
        raise ValueError(f"item id {item_id!r} is not of the form id_NNNNNNNN")
    return int(number)


def read_partition(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image names, class ids, statuses) in file order."""
    lines = read_lines(path, LAYOUT)
    if len(lines) < 2 or not lines[0].strip().isdigit() or lines[1].split() != ["image_name", "item_id",
                                                                                   "evaluation_status"]:
        raise ValueError(f"{path}: expected line 1 the number of rows and line 2 "
                         f"'image_name item_id evaluation_status', but got {lines[:2]!r}.")
    rows = lines[2:]
    if int(lines[0]) != len(rows):
        raise ValueError(f"{path}: line 1 says {int(lines[0])} rows, but the file has {len(rows)} (truncated?).")
    names, labels, statuses = [], [], []
    for n, line in enumerate(rows, 3):
        parts = line.split()
        try:
            if len(parts) != 3 or parts[2] not in STATUSES:
                raise ValueError(f"expected 'image_name item_id {'|'.join(STATUSES)}'")
            labels.append(item_class(parts[1]))
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}, but got {line!r}.") from e
        names.append(parts[0])
        statuses.append(parts[2])
    return names, np.array(labels, dtype=np.int64), np.array(statuses)


class InShopDataset(FileDataset):
    name = "inshop"
    layout = LAYOUT

    def __init__(self, root: Path | None, image_size: int = 224) -> None:
        self.root = check_root(root, "In-Shop", LAYOUT)
        self.image_size = image_size
        names, self.labels, status = read_partition(self.root / "Eval" / "list_eval_partition.txt")
        if not names:
            raise ValueError(f"{self.root / 'Eval' / 'list_eval_partition.txt'} lists no images.")
        candidates = [self.root / base / names[0] for base in IMAGE_BASES]
        base = next((b for b, c in zip(IMAGE_BASES, candidates) if c.is_file()), None)
        if base is None:
            raise FileNotFoundError(f"In-Shop image {names[0]!r} not found: expected {candidates[0]} "
                                    f"(or {candidates[1]}). Layout: {LAYOUT} (docs/datasets.md).")
        self.image_base = base
        self.relpaths = [f"{base}/{n}" if base else n for n in names]
        self.train_classes = np.unique(self.labels[status == "train"])
        self.test_classes = np.unique(self.labels[status != "train"])
        self.test_query = np.flatnonzero(status == "query")
        self.test_gallery = np.flatnonzero(status == "gallery")
        self._check()
        if not len(self.test_query) or not len(self.test_gallery):
            raise ValueError(f"In-Shop at {self.root}: {len(self.test_query)} query and {len(self.test_gallery)} "
                             "gallery images; the test half needs both.")
