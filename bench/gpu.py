"""The checks a lent GPU runs (bench/gpu_check.sh), printed as one table; `--smoke` runs each on the CPU, tiny.

    python bench/gpu.py                  # on CUDA: the table for bench/RESULTS.md (~5 minutes on one GPU)
    python bench/gpu.py --smoke          # CPU, tiny sizes: every code path, no figures worth keeping

Rows, each with its reference measured in the same run:
  cuda tests        the tests that only run where torch sees a GPU (tests/test_packed.py, -k cuda)
  trainer           our Trainer's training images/s for ResNet-50 at 224 px (bf16 autocast, channels_last)
                    against a plain fp32 loop over the same in-memory batches (bench/trainer.py's hand loop)
  (ResNet-50 from random weights, warm-up 0: the machine has no network for the pretrained weights)
  data path         decoded-uint8 training batches (crop, resize, flip, normalise) produced on the GPU
                    against one CPU thread producing the same batches
  four trials       aggregate training images/s of four 0.25-GPU trials sharing the GPU against one trial
                    alone on it (search.py on a CUB-format tree; each from its epochs' train_seconds)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import trainer as trainer_bench  # noqa: E402  (bench/trainer.py)
from data import write_tree  # noqa: E402  (bench/data.py)

from trainables.data.augment import normalize  # noqa: E402
from trainables.data.packed import PackedImages, Pixels, layout  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402

Row = tuple[str, str, str, str]  # check, value, reference, ratio


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(run: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def cuda_tests(smoke: bool) -> Row:
    """Run the CUDA-only tests (on the CPU they are collected and skipped: the smoke run checks they exist)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider",
                           str(BENCH.parent / "tests" / "test_packed.py")], capture_output=True, text=True,
                          cwd=BENCH.parent)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    ok = done.returncode == 0 and ("passed" in summary or (smoke and "skipped" in summary))
    return "cuda tests", summary, "all pass", "ok" if ok else "FAILED"


def trainer_speed(device: torch.device, smoke: bool, repeats: int) -> Row:
    case = (trainer_bench.Case("resnet18", 3, 32, 8, 2) if smoke else trainer_bench.Case("resnet50", 3, 224, 120, 8))
    cfg, data = trainer_bench.config(case), trainer_bench.fake_images(case)
    ours = Trainer(cfg, data, device=device).train_epoch
    plain = trainer_bench.hand_loop(cfg, data, device, fast=False)
    for run in (ours, plain):  # untimed: cuDNN autotuning, allocator
        run()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(repeats):
        for name, run in (("ours", ours), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("ours", ours)):
            times[name].append(seconds(run, device))
    images = case.batch_size * case.steps
    rate = {k: images / statistics.median(v) for k, v in times.items()}
    precision = "bf16+channels_last" if device.type == "cuda" else "fp32 (CPU)"
    return (f"trainer {case.name} {precision}, images/s", f"{rate['ours']:,.0f}", f"{rate['plain']:,.0f} (fp32 loop)",
            f"{rate['ours'] / rate['plain']:.2f}")


def data_path_speed(device: torch.device, smoke: bool, repeats: int) -> Row:
    size, n, batch = (32, 64, 32) if smoke else (224, 1200, 120)
    short = round(size * 256 / 224)
    rng = np.random.default_rng(0)
    shapes = np.array([[short, int(short * rng.uniform(1.0, 1.5))] for _ in range(n)])
    pixels = Pixels(rng.integers(0, 256, int(shapes.prod(1).sum()) * 3, dtype=np.uint8), shapes, layout(shapes))
    images = PackedImages(pixels, np.arange(n), np.zeros(n, dtype=np.int64), size, train=True, name="synthetic")

    def epoch(on: torch.device) -> Callable[[], None]:
        def run() -> None:
            generator = torch.Generator().manual_seed(0)
            for start in range(0, n, batch):
                normalize(images.batch(list(range(start, start + batch)), on, generator))
        return run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = statistics.median(seconds(epoch(torch.device("cpu")), torch.device("cpu")) for _ in range(repeats))
    finally:
        torch.set_num_threads(threads)
    epoch(device)()  # untimed: first kernels
    here = statistics.median(seconds(epoch(device), device) for _ in range(repeats))
    return (f"data path {size} px on {device.type}, images/s", f"{n / here:,.0f}", f"{n / cpu:,.0f} (1 CPU thread)",
            f"{cpu / here:.2f}")


def trial_rates(out: Path, fit_images: int) -> list[float]:
    """Each trial's training images/s: its fit images over its epochs' median train_seconds."""
    rates = []
    for result in sorted((out / "ray").glob("*/result.json")):
        epochs = [json.loads(line) for line in result.read_text().splitlines()]
        rates.append(fit_images / statistics.median(e["train_seconds"] for e in epochs))
    return rates


def four_trials(device: torch.device, smoke: bool, tmp: Path) -> Row:
    import search
    from trainables.data import build_dataset
    from trainables.data.splits import fixed_split

    root = tmp / "CUB_200_2011"
    os.environ["DMLTUNE_CACHE"] = str(tmp / "cache")  # decoded data of this throwaway tree stays here
    classes, per_class = (8, 6) if smoke else (40, 30)
    write_tree(root, classes=classes, per_class=per_class, train_classes=classes - 2)
    backbone, size, epochs, batch = ("resnet18", "32", "1", "12") if smoke else ("resnet50", "224", "3", "120")
    share, alone = ("0", "0") if device.type == "cpu" else ("0.25", "1")
    dataset = build_dataset("cub", root, int(size))
    split = fixed_split(dataset.train_classes, 0.1, seed=0)
    fit_images = int(np.isin(dataset.labels, split.fit).sum())
    rates = {}
    for name, trials, gpus in (("alone", "1", alone), ("four", "4", share)):
        out = tmp / name
        argv = ["--loss", "proxy_anchor", "--dataset", "cub", "--data-root", str(root), "--trials", trials,
                "--max-epochs", epochs, "--grace-period", epochs, "--final-epochs", "1", "--top-k", "1",
                "--backbone", backbone, "--image-size", size, "--warmup-epochs", "0", "--no-freeze-bn",
                "--batch-size", batch,
                "--gpus-per-trial", gpus, "--cpus-per-trial", "1", "--out", str(out)]
        with contextlib.redirect_stdout(io.StringIO()):
            code = search.main(argv)
        if code != 0:
            return "four trials on one GPU", f"search.py exited {code}", "", "FAILED"
        rates[name] = sum(trial_rates(out, fit_images))
    return (f"{'4 trials x 0.25 GPU' if share != '0' else '4 CPU trials'}, images/s (sum)", f"{rates['four']:,.0f}",
            f"{rates['alone']:,.0f} (1 trial alone)", f"{rates['four'] / rates['alone']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check that every row still runs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-trials", action="store_true", help="leave out the four-trials row (two searches)")
    args = p.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device; run with --smoke on a CPU-only machine.")
    repeats = 1 if args.smoke else args.repeats
    where = "CPU smoke run" if args.smoke else torch.cuda.get_device_name(device)
    print(f"{where}; torch {torch.__version__}; medians of {repeats}", flush=True)
    rows = [cuda_tests(args.smoke), trainer_speed(device, args.smoke, repeats),
            data_path_speed(device, args.smoke, repeats)]
    if not args.skip_trials:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(four_trials(device, args.smoke, Path(tmp)))
    print("| check | value | reference (same run) | ratio |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if any(row[3] == "FAILED" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
