"""A file-backed benchmark's images decoded once by the driver, in the form trials and final-stage tasks get.

Trials never open files under --data-root (a cluster's GPU workers do not have them): the driver
decodes each half once, resizes it to the short side the transforms need (Resize(size * 256 / 224),
the evaluation view's first step, done by torchvision on the PIL image exactly as images.py does),
and keeps the uint8 pixels in one flat buffer. That buffer is what goes into Ray's object store,
where co-located trials share one copy (numpy arrays are read zero-copy from it).

Why decoded uint8 and not JPEG bytes: bench/data.py measures, per CPU core, training batches from
decoded uint8 at 4.1-4.9x the images/s of the per-image PIL path, while JPEGs re-encoded at the same
size spend most of that gain on decoding again every epoch (2.5-2.8x; bench/RESULTS.md). The price
is size (~0.26 MB an image at 224 px: CUB's training half ~1.5 GB, SOP's ~15.5 GB), which the
object store must hold: the data is refused before any trial when it cannot fit (`check_fits`).

Each half is cached under the user's cache dir, keyed by the dataset fingerprint and image size,
so a second run or --resume maps the cached file instead of decoding again.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.data.augment import center_box, crop_boxes, normalize, resize_crops, resized_shape, short_side
from trainables.data.base import DMLDataset, user_cache_dir
from trainables.data.images import FileDataset, ImageReadError, load_rgb

# The share of a node's object store the data may take: trials' results, checkpoints in transit and the
# final stage's models pass through the same store.
STORE_SHARE = 0.8
FORMAT_VERSION = 1  # of the cached files; a change to how images are decoded or laid out bumps it
CHANNELS = 3


@dataclass(frozen=True, eq=False)
class Pixels:
    """Images of different sizes (uint8 [h, w, 3] each) in one flat buffer: what the object store holds."""

    data: np.ndarray  # uint8, flat: every image's pixels one after another
    shapes: np.ndarray  # int64 [N, 2]: (h, w) of each image
    offsets: np.ndarray  # int64 [N]: where each image starts in `data`

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.shapes.nbytes + self.offsets.nbytes)

    def image(self, k: int) -> np.ndarray:
        """Image k as a read-only uint8 [h, w, 3] view (no copy)."""
        h, w = self.shapes[k]
        start = self.offsets[k]
        return self.data[start: start + h * w * CHANNELS].reshape(h, w, CHANNELS)


def layout(shapes: np.ndarray) -> np.ndarray:
    """Offsets of images of these shapes laid out one after another."""
    sizes = shapes[:, 0] * shapes[:, 1] * CHANNELS
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


class PackedImages(Dataset):
    """Some items of a PackedDataset, yielding the official transforms' views of the stored images.

    Batches come out as uint8 [B, 3, size, size] (`batch`, and through a DataLoader `__getitems__`);
    the trainer normalises them on its device (augment.normalize). `__getitem__` yields one
    normalised float image like the file datasets do. `positions` index `pixels`; -1 marks an item
    whose image was not shipped (the training half's images at the test stage), which only errs if read.
    """

    channels = CHANNELS

    def __init__(self, pixels: Pixels, positions: np.ndarray, labels: np.ndarray, image_size: int, train: bool,
                 name: str) -> None:
        self.pixels, self.positions = pixels, np.asarray(positions, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size, self.train, self.name = image_size, train, name

    def __len__(self) -> int:
        return len(self.labels)

    def _images(self, indices: Sequence[int]) -> list[np.ndarray]:
        positions = self.positions[np.asarray(indices, dtype=np.int64)]
        if (positions < 0).any():
            raise LookupError(f"{self.name}: item {int(np.asarray(indices)[positions < 0][0])} of this subset was not "
                              "shipped to this process (only the half its stage may use is); read it in the driver.")
        return [self.pixels.image(k) for k in positions]

    def batch(self, indices: Sequence[int], device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 3, size, size] on `device`: random crops and flips when training, else the centre crops.

        Crop boxes are drawn on the CPU (from `generator`, else torch's global RNG, which DataLoader
        workers seed); only the crops' pixels travel to the device, and the resize runs there.
        """
        images = self._images(indices)
        size = self.image_size
        if not self.train:
            tops_lefts = [center_box(im.shape[0], im.shape[1], size) for im in images]
            crops = [torch.from_numpy(np.ascontiguousarray(im[t: t + size, l: l + size]))
                     for im, (t, l) in zip(images, tops_lefts)]
            return torch.stack(crops).permute(0, 3, 1, 2).contiguous().to(device)
        shapes = torch.as_tensor(np.array([im.shape[:2] for im in images]))
        boxes = crop_boxes(shapes[:, 0], shapes[:, 1], generator).tolist()
        flips = torch.rand(len(images), generator=generator) < 0.5
        # A copy of the box only (a few hundred kB): read-only store memory cannot back a torch tensor.
        crops = [torch.from_numpy(np.ascontiguousarray(im[t: t + h, l: l + w]))
                 for im, (t, l, h, w) in zip(images, boxes)]
        return resize_crops(crops, size, flips, device)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A DataLoader worker's whole batch at once (torch's batched fetch): (uint8 images, class ids)."""
        return self.batch(indices), torch.as_tensor(self.labels[indices])

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`__getitems__` already returns the batch."""
        return batch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return normalize(self.batch([i]))[0], int(self.labels[i])


class PackedDataset(DMLDataset):
    """A FileDataset's labels, class halves and fingerprint, with the decoded images of some items only.

    `items` are the item indices whose images are held (one half); the test guard of `subset` and
    `items` is DMLDataset's, as for the files. Pickles small apart from `pixels`, which Ray ships
    out of band.
    """

    def __init__(self, source: FileDataset, items: np.ndarray, pixels: Pixels) -> None:
        if len(items) != len(pixels.shapes):
            raise ValueError(f"{len(items)} items but {len(pixels.shapes)} images.")
        self.name, self.channels, self.image_size = source.name, CHANNELS, source.image_size
        self.labels, self.train_classes, self.test_classes = source.labels, source.train_classes, source.test_classes
        self.test_query, self.test_gallery = source.test_query, source.test_gallery
        self.held = np.asarray(items, dtype=np.int64)
        self.pixels = pixels
        self._source_fingerprint = source.fingerprint()

    @property
    def nbytes(self) -> int:
        """Bytes of decoded pixels: what the object store must hold."""
        return self.pixels.nbytes

    def _load(self, indices: np.ndarray, train: bool) -> PackedImages:
        pos = np.minimum(np.searchsorted(self.held, indices), max(len(self.held) - 1, 0))
        positions = np.where(self.held[pos] == indices, pos, -1) if len(self.held) else np.full(len(indices), -1)
        return PackedImages(self.pixels, positions, self.labels[indices], self.image_size, train, self.name)

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._source_fingerprint)


class DataTooLarge(ValueError):
    """The decoded data does not fit a node's Ray object store; the message says what to change."""


def check_fits(nbytes: int, stores: dict[str, float], what: str) -> None:
    """Refuse data larger than STORE_SHARE of the smallest object store (`stores`: node -> bytes).

    Every node that runs a trial or task holds one copy, and the driver's node the original.
    """
    if not stores:
        return
    node, smallest = min(stores.items(), key=lambda kv: kv[1])
    if nbytes > STORE_SHARE * smallest:
        raise DataTooLarge(
            f"{what} takes {nbytes / 1e9:.2f} GB as decoded uint8, but the Ray object store of node {node} holds "
            f"{smallest / 1e9:.2f} GB and the data may fill at most {STORE_SHARE:.0%} of it. Give every node a store "
            f"of at least {nbytes / STORE_SHARE / 1e9:.1f} GB (ray start --object-store-memory=BYTES; cluster.yaml "
            "sets it for SOP), or lower --image-size.")


def half_items(dataset: DMLDataset, test: bool) -> np.ndarray:
    """Item indices of the test half, or of the training half."""
    return np.flatnonzero(np.isin(dataset.labels, dataset.test_classes if test else dataset.train_classes))


# FileDataset -> {test: its PackedDataset}: the search and the final stage get the same object (one put).
_packed: weakref.WeakKeyDictionary[FileDataset, dict[bool, PackedDataset]] = weakref.WeakKeyDictionary()


def for_workers(dataset: DMLDataset, test: bool = False, echo: Callable[[str], None] | None = None) -> DMLDataset:
    """What trials and final-stage tasks receive: for image files, one half decoded (the training half,
    or the test half at the test stage); in-memory datasets (glyphs) as they are.

    Read from the cache when it holds this half at this size; otherwise decoded here, in the driver,
    where a missing or corrupt image raises ImageReadError naming it, before any trial starts.
    """
    if not isinstance(dataset, FileDataset):
        return dataset
    known = _packed.setdefault(dataset, {})
    if test not in known:
        known[test] = _pack_half(dataset, test, echo)
    return known[test]


def _pack_half(dataset: FileDataset, test: bool, echo: Callable[[str], None] | None) -> PackedDataset:
    items = half_items(dataset, test)
    fingerprint = dataset.fingerprint()
    digest = fingerprint["sha256_16" if test else "train_sha256_16"]
    half = "test" if test else "train"
    folder = (user_cache_dir() / "packed" /
              f"{dataset.name}-{half}-{digest}-{dataset.image_size}px-v{FORMAT_VERSION}")
    pixels = load_packed(folder, items)
    how = "from the cache"
    if pixels is None:
        paths = [str(dataset.root / dataset.relpaths[i]) for i in items]
        pixels = pack_to(folder, paths, short_side(dataset.image_size), items)
        how = "decoded and cached"
    if echo:
        echo(f"data: {len(items)} {half}-half images of {dataset.name} at short side "
             f"{short_side(dataset.image_size)} px, {pixels.nbytes / 1e9:.2f} GB as uint8, {how} in {folder}")
    return PackedDataset(dataset, items, pixels)


def load_packed(folder: Path, items: np.ndarray) -> Pixels | None:
    """The cached half in `folder` (pixels memory-mapped), or None if absent or made for other items."""
    try:
        if not np.array_equal(np.load(folder / "items.npy"), items):
            return None
        shapes = np.load(folder / "shapes.npy")
        # A plain ndarray view of the map: Ray then ships the bytes out of band, as for any array.
        return Pixels(np.load(folder / "pixels.npy", mmap_mode="r").view(np.ndarray), shapes, layout(shapes))
    except (OSError, ValueError):
        return None


def _header_shape(path: str, short: int) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... : name the file, as load_rgb does
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return resized_shape(height, width, short)


def _decode_into(out: np.ndarray, path: str, short: int, shape: tuple[int, int]) -> None:
    from torchvision.transforms import functional as TF

    image = np.asarray(TF.resize(load_rgb(path), short))  # eval_transform's Resize, on the PIL image
    if image.shape[:2] != tuple(shape):
        raise ImageReadError(f"cannot read image {path}: its header says {shape} after resizing but it "
                             f"decoded to {image.shape[:2]}.")
    out[:] = image.reshape(-1)


def decode(paths: Sequence[str], short: int, allocate: Callable[[int], np.ndarray],
           threads: int | None = None) -> Pixels:
    """Decode and resize every image into one buffer from `allocate(total bytes)` (in memory or a file).

    Headers first (sizes only), so the buffer is allocated once at its final size; then the images,
    in threads (PIL releases the GIL while decoding and resizing).
    """
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        shapes = np.array(list(pool.map(lambda p: _header_shape(p, short), paths)), dtype=np.int64).reshape(-1, 2)
        offsets = layout(shapes)
        data = allocate(int((shapes[:, 0] * shapes[:, 1]).sum()) * CHANNELS)
        sizes = shapes[:, 0] * shapes[:, 1] * CHANNELS
        list(pool.map(lambda k: _decode_into(data[offsets[k]: offsets[k] + sizes[k]], paths[k], short,
                                             tuple(shapes[k])), range(len(paths))))
    return Pixels(data, shapes, offsets)


def pack_to(folder: Path, paths: Sequence[str], short: int, items: np.ndarray) -> Pixels:
    """Decode `paths` (of `items`) into cache `folder`: written under a temporary name, then renamed,
    so the cache holds a half whole or not at all, even when the driver is stopped mid-way."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    try:
        pixels = decode(paths, short, lambda n: np.lib.format.open_memmap(tmp / "pixels.npy", "w+", np.uint8, (n,)))
        pixels.data.flush()
        pixels = Pixels(pixels.data.view(np.ndarray), pixels.shapes, pixels.offsets)
        np.save(tmp / "shapes.npy", pixels.shapes)
        np.save(tmp / "items.npy", items)
        shutil.rmtree(folder, ignore_errors=True)  # a stale or torn copy: this one replaces it
        os.replace(tmp, folder)  # the memory map stays valid: same file, new name
        return pixels
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
