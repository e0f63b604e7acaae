"""Writers of tiny benchmarks in the exact on-disk formats of docs/datasets.md (a few classes, small JPEGs).

Class ids keep the ranges of the real splits (CUB {1, 2, 101, 102}, Cars {1, 2, 99, 100}, SOP test
classes from 11319, In-Shop item ids `id_000000NN`), so the loaders' split rules are exercised as they
are on the real files. Each writer returns the root plus what the test expects the loader to find.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SIZE = (48, 40)  # width, height: not square, so Resize/CenterCrop really crop


@dataclass
class Written:
    """What a writer put on disk: root-relative image paths and their class ids, in list-file order."""

    root: Path
    relpaths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    query: list[int] = field(default_factory=list)  # In-Shop: item indices of the query set
    gallery: list[int] = field(default_factory=list)

    def paths_of(self, classes: set[int]) -> list[Path]:
        return [self.root / p for p, c in zip(self.relpaths, self.labels) if c in classes]


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = IMAGE_SIZE, mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, "JPEG", quality=80)


def corrupt(path: Path) -> None:
    """Replace an image by bytes no decoder accepts (a JPEG header, then garbage)."""
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)


def write_cub(root: Path, classes: tuple[int, ...] = (1, 2, 101, 102), per_class: int = 3) -> Written:
    """CUB_200_2011: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, images/NNN.Name/."""
    out = Written(root)
    images, image_labels, split = [], [], []
    image_id = 0
    for c in classes:
        folder = f"{c:03d}.Bird_{c}"
        for k in range(per_class):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{k:04d}_{image_id}.jpg"
            # One greyscale image: CUB has a few, and the loader must convert them to RGB.
            write_jpeg(root / "images" / rel, seed=image_id, mode="L" if image_id == 2 else "RGB")
            images.append(f"{image_id} {rel}")
            image_labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {k % 2}")  # the classification split DML ignores
            out.relpaths.append(f"images/{rel}")
            out.labels.append(c)
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(image_labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in classes))
    return out


def write_cars(root: Path, classes: tuple[int, ...] = (1, 2, 99, 100), per_class: int = 3) -> Written:
    """Cars196: cars_annos.mat (struct array `annotations`, as the real file) and car_ims/*.jpg.

    The real file is a 1 x N MATLAB struct array whose fields hold a char array (the path) and
    uint8 / uint16 scalars; `scipy.io.savemat` of a structured object array writes the same layout.
    """
    from scipy.io import savemat

    out = Written(root)
    order = [c for _ in range(per_class) for c in classes]  # classes interleaved, as in the real file
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annos = np.empty((1, len(order)), dtype=[(f, "O") for f in fields])
    for i, c in enumerate(order):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_jpeg(root / rel, seed=1000 + i)
        annos[0, i] = (np.array([rel]), *(np.array([[v]], dtype=np.uint16) for v in (1, 2, 30, 20)),
                       np.array([[c]], dtype=np.uint8), np.array([[i % 2]], dtype=np.uint8))
        out.relpaths.append(rel)
        out.labels.append(c)
    class_names = np.empty((1, max(classes)), dtype=object)
    class_names[0, :] = [np.array([f"Car {k + 1}"]) for k in range(max(classes))]
    savemat(root / "cars_annos.mat", {"annotations": annos, "class_names": class_names})
    return out


def write_sop(root: Path, train_classes: tuple[int, ...] = (1, 2, 3), test_classes: tuple[int, ...] = (11319, 11320),
              per_class: int = 2) -> Written:
    """Stanford_Online_Products: Ebay_train.txt / Ebay_test.txt with header, images under <super>_final/."""
    out = Written(root)
    image_id = 0
    for name, classes in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        rows = ["image_id class_id super_class_id path"]
        for c in classes:
            super_id, super_name = (1, "bicycle") if c % 2 else (2, "cabinet")
            for k in range(per_class):
                image_id += 1
                rel = f"{super_name}_final/{110000000000 + c}_{k}.JPG"
                write_jpeg(root / rel, seed=2000 + image_id)
                rows.append(f"{image_id} {c} {super_id} {rel}")
                out.relpaths.append(rel)
                out.labels.append(c)
        (root / name).write_text("\n".join(rows) + "\n")
    return out


def write_inshop(root: Path, train_items: tuple[int, ...] = (2, 7), test_items: tuple[int, ...] = (12, 13),
                 per_item: int = 4, image_dir: str = "Img") -> Written:
    """In-shop Clothes Retrieval Benchmark: Eval/list_eval_partition.txt and <image_dir>/img/... images.

    Rows are whitespace-aligned like the real file; a test item's first two images query and the
    rest are gallery (the real file splits each test item's images the same way, by view).
    `image_dir="Img"` is the official layout (<root>/Img/img/...); "" unpacks img/ into the root.
    """
    out = Written(root)
    rows = []
    views = ["1_front", "2_side", "3_back", "4_full", "7_additional"]
    for item in (*train_items, *test_items):
        gender, category = ("WOMEN", "Dresses") if item % 2 else ("MEN", "Denim")
        for k in range(per_item):
            name = f"img/{gender}/{category}/id_{item:08d}/{k + 1:02d}_{views[k % len(views)]}.jpg"
            if item in train_items:
                status = "train"
            else:
                status = "query" if k < 2 else "gallery"
                (out.query if status == "query" else out.gallery).append(len(out.relpaths))
            write_jpeg(root / image_dir / name, seed=3000 + item * 10 + k)
            rows.append(f"{name:<70}id_{item:08d}     {status}")
            out.relpaths.append(f"{image_dir}/{name}" if image_dir else name)
            out.labels.append(item)
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    return out


WRITERS = {"cub": write_cub, "cars": write_cars, "sop": write_sop, "inshop": write_inshop}
# The list file each loader cannot do without (relative to the root).
LIST_FILES = {"cub": "images.txt", "cars": "cars_annos.mat", "sop": "Ebay_test.txt",
              "inshop": "Eval/list_eval_partition.txt"}
