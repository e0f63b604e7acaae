"""Training images per second per CPU core delivered to the trainer at 224 px: today's per-image PIL path
against the decoded data trials now receive (trainables/data/packed.py), and node memory with one and
four co-located trials reading it from Ray's object store (the store's one copy plus what each trial
process adds privately, from /proc/self/smaps_rollup). One run measures everything.

    python bench/data.py                 # 2,400 JPEGs (2,000 in the training half), 3 repeats
    python bench/data.py --quick         # 400 JPEGs: a smoke run of every stage

It writes a CUB-format tree of ~500x375 JPEGs at quality 75 (CUB's own size and quality; smooth
colour fields with texture, so they compress like photographs, ~25-45 KB) and times, in one process
with one torch thread, one pass of training batches (RandomResizedCrop 224 + flip + ImageNet
normalisation, batch 120) through each path:

  files (today)    PIL decode of the full JPEG + torchvision transforms, per image
  jpeg 256 q90     the alternative compact form: JPEGs re-encoded at short side 256, decoded by
                   torchvision.io.decode_jpeg each epoch, then the same uint8 crops as below
  decoded uint8    packed.py: images decoded once at short side 256; crop boxes for the whole batch
                   at once (augment.crop_boxes), uint8 resize, normalisation of the batch

The clock is the process's CPU time, so "images/s per core" is what one core delivers even on a
machine shared with other jobs; each path's repeats alternate with the others' and the table shows
medians. The one-off cost of decoding the training half (in the driver, threaded) is shown apart.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainables.data import build_dataset  # noqa: E402
from trainables.data.augment import crop_boxes, normalize, resize_crops  # noqa: E402
from trainables.data.images import FileDataset  # noqa: E402
from trainables.data.packed import PackedDataset, PackedImages, for_workers  # noqa: E402

SIZE, BATCH = 224, 120


def write_tree(root: Path, classes: int, per_class: int, train_classes: int, seed: int = 0) -> None:
    """A CUB_200_2011-format tree: images.txt, image_class_labels.txt, images/NNN.Name/*.jpg (~500x375, q75)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Feathers and foliage: correlated noise, a few tiles reused at random offsets (generating it is slow).
    textures = [(rng.normal(0, 10, (600, 600, 3)).cumsum(axis=1) * 0.15).astype(np.int16) for _ in range(4)]
    lines, labels = [], []
    for k in range(classes * per_class):
        c = k // per_class + (1 if k // per_class < train_classes else 101 - train_classes)
        w, h = (500, 375) if k % 4 else (375, 500)  # CUB mixes landscape and portrait
        w, h = w - int(rng.integers(0, 60)), h - int(rng.integers(0, 40))
        coarse = rng.random((6, 8, 3)) * 255  # a smooth colour field: sky, bird, branch
        field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.int16)
        top, left = rng.integers(0, 100, 2)
        pixels = np.clip(field + textures[k % len(textures)][top: top + h, left: left + w], 0, 255).astype(np.uint8)
        rel = f"{c:03d}.Bird_{c}/Bird_{c}_{k:05d}.jpg"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / rel, "JPEG", quality=75)
        lines.append(f"{k + 1} {rel}")
        labels.append(f"{k + 1} {c}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")


def cpu_seconds(run: Callable[[], int]) -> tuple[int, float]:
    start = time.process_time()
    n = run()
    return n, time.process_time() - start


def files_epoch(dataset: FileDataset, items: np.ndarray, n: int) -> Callable[[], int]:
    """Today's path: one PIL decode + torchvision transforms per image, stacked into batches."""
    files = dataset._load(items[:n], train=True)

    def run() -> int:
        for start in range(0, n, BATCH):
            torch.stack([files[i][0] for i in range(start, min(start + BATCH, n))])
        return n
    return run


def reencoded(packed: PackedImages, n: int) -> list[torch.Tensor]:
    """The training images as JPEG bytes at short side 256, quality 90 (the other compact form)."""
    from PIL import Image

    out = []
    for k in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(packed.pixels.image(int(packed.positions[k])))).save(buffer, "JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    return out


def jpeg_epoch(encoded: list[torch.Tensor], n: int) -> Callable[[], int]:
    from torchvision.io import decode_jpeg

    def run() -> int:
        for start in range(0, n, BATCH):
            images = [decode_jpeg(b).permute(1, 2, 0) for b in encoded[start: start + BATCH]]
            shapes = torch.tensor([im.shape[:2] for im in images])
            boxes = crop_boxes(shapes[:, 0], shapes[:, 1]).tolist()
            crops = [im[t: t + h, l: l + w].contiguous() for im, (t, l, h, w) in zip(images, boxes)]
            normalize(resize_crops(crops, SIZE, torch.rand(len(crops)) < 0.5))
        return n
    return run


def packed_epoch(packed: PackedImages, n: int) -> Callable[[], int]:
    def run() -> int:
        for start in range(0, n, BATCH):
            normalize(packed.batch(list(range(start, min(start + BATCH, n)))))
        return n
    return run


def smaps() -> dict[str, int]:
    """This process's memory totals in bytes (/proc/self/smaps_rollup): private pages are its own, shared
    pages (the object store's, once mapped) are the node's one copy."""
    fields = dict(line.split(":") for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    kb = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
    return {"private": kb["Private_Clean"] + kb["Private_Dirty"], "shared": kb["Shared_Clean"] + kb["Shared_Dirty"]}


def node_memory(data: PackedDataset, trials: int) -> tuple[float, float]:
    """(MB of shared store pages each trial maps, MB the trial processes' private memory grew by, summed) with
    `trials` co-located trials, each taking the data as run_trial does and reading one epoch of batches."""
    import ray

    from trainables.ray_data import share

    @ray.remote(num_cpus=1)
    def trial(setup: dict) -> tuple[int, int]:
        torch.set_num_threads(1)
        # Warm-up on a dummy batch: imports and a batch's working buffers are not the data.
        normalize(resize_crops([torch.zeros(300, 300, 3, dtype=torch.uint8)] * BATCH, SIZE))
        before = smaps()
        dataset = ray.get(setup["data"])
        train = dataset.subset(dataset.train_classes, train=True)
        for start in range(0, len(train), BATCH):
            normalize(train.batch(list(range(start, min(start + BATCH, len(train))))))
        after = smaps()
        return after["shared"] - before["shared"], after["private"] - before["private"]

    ref = share(data)
    grown = ray.get([trial.remote({"data": ref}) for _ in range(trials)])
    return statistics.median(g[0] for g in grown) / 1e6, sum(g[1] for g in grown) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="400 images, 1 repeat: a smoke run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=600, help="training images per timed pass of each path")
    args = p.parse_args()
    classes, per_class, train_classes = (20, 20, 16) if args.quick else (120, 20, 100)
    repeats, n = (1, 120) if args.quick else (args.repeats, args.images)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "CUB_200_2011"
        os.environ["DMLTUNE_CACHE"] = str(Path(tmp) / "cache")
        started = time.perf_counter()
        write_tree(root, classes, per_class, train_classes)
        jpeg_kb = np.mean([p.stat().st_size for p in (root / "images").rglob("*.jpg")]) / 1024
        print(f"wrote {classes * per_class} JPEGs (mean {jpeg_kb:.0f} KB) in {time.perf_counter() - started:.0f}s")
        dataset = build_dataset("cub", root, SIZE)
        items = np.flatnonzero(np.isin(dataset.labels, dataset.train_classes))
        started = time.perf_counter()
        shipped = for_workers(dataset)
        decode_s = time.perf_counter() - started
        started = time.perf_counter()
        for_workers(build_dataset("cub", root, SIZE))  # a second run: from the cache
        cached_s = time.perf_counter() - started
        packed = shipped.subset(dataset.train_classes, train=True)
        encoded = reencoded(packed, n)
        paths = {"files (today)": files_epoch(dataset, items, n), "jpeg 256 q90": jpeg_epoch(encoded, n),
                 "decoded uint8": packed_epoch(packed, n)}
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(repeats):
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                count, seconds = cpu_seconds(paths[name])
                rates[name].append(count / seconds)
        sizes = {"files (today)": jpeg_kb, "jpeg 256 q90": np.mean([len(b) for b in encoded]) / 1024,
                 "decoded uint8": shipped.nbytes / len(items) / 1024}
        reference = statistics.median(rates["files (today)"])
        print(f"\n{len(items)} training images; {n} per timed pass, batch {BATCH}, {SIZE} px, "
              f"median of {repeats}, CPU time of one thread")
        print("| path | images/s per core | vs today | KB per image held |")
        print("|---|---:|---:|---:|")
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"| {name} | {rate:,.0f} | {rate / reference:.2f} | {sizes[name]:,.0f} |")
        print(f"\ndecoding the training half once in the driver ({os.cpu_count()} threads): {decode_s:.1f}s "
              f"({len(items) / decode_s:,.0f} images/s); a second run reads the cache in {cached_s:.2f}s")

        from trainables.ray_cluster import init_ray

        init_ray(None, num_cpus=4)
        copy = shipped.nbytes / 1e6
        print(f"\nnode memory, co-located trials each reading one epoch of the {copy:,.0f} MB of decoded data:")
        print("| co-located trials | store pages each trial maps, MB | trials' private growth, MB (sum) "
              "| node memory for the data, MB | private copies would be, MB |")
        print("|---:|---:|---:|---:|---:|")
        for trials in (1, 4):
            mapped, grown = node_memory(shipped, trials)
            print(f"| {trials} | {mapped:,.0f} | {grown:,.1f} | {copy + grown:,.0f} | {trials * copy:,.0f} |")

if __name__ == "__main__":
    main()
