"""Benchmark: Recall@{1,10,100,1000} + MAP@R on SOP's test shape (docs/metrics.md). Run by hand, not a test.

    python bench/eval.py            # 60,502 x 512, 11,316 classes: several minutes
    python bench/eval.py --quick    # 6,000 x 128, 1,122 classes: seconds

Every method runs in its own subprocess on the same saved embeddings, so its time and peak
extra memory (peak RSS during the call minus RSS before it) are its own:
  matmul (torch)   the floor: one chunked N x N x D fp32 product into a reused, row-aligned buffer;
  matmul (numpy)   the same product through numpy's OpenBLAS, for reference;
  ours             trainables.metrics.retrieval_metrics, Recall@K + MAP@R + R-precision;
  ours, recall     the same with map_at_r=False;
  PML k=1000       pytorch-metric-learning's AccuracyCalculator on the same input with its default
                   faiss k-NN (k = 1000 + self), plus Recall@K read from its k-NN labels: like-for-like;
  PML k=max_bin    AccuracyCalculator as its docs advise for MAP@R (k = largest class - 1):
                   precision_at_1, MAP@R, R-precision only.
The embeddings are class centres plus Gaussian noise, tuned so Recall@1 is SOP-like (~0.8):
random vectors would make MAP@R trivially zero and the cross-check against PML meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KS = (1, 10, 100, 1000)
# noise: per-coordinate noise over unit-variance class centres, tuned per shape for Recall@1 ~ 0.8.
SHAPES = {"full": {"n": 60502, "dim": 512, "classes": 11316, "noise": 2.2},
          "quick": {"n": 6000, "dim": 128, "classes": 1122, "noise": 1.5}}
METHODS = ("matmul-torch", "matmul-numpy", "ours", "ours-recall", "pml-k1000", "pml-maxbin")
LABELS = {"matmul-torch": "matmul floor (torch)", "matmul-numpy": "matmul (numpy/OpenBLAS)",
          "ours": "ours R@K+MAP@R", "ours-recall": "ours R@K only",
          "pml-k1000": "PML k=1000 (R@K+MAP@R)", "pml-maxbin": "PML k=max_bin (P@1+MAP@R)"}
# Same rows per chunk as retrieval_metrics' default (a 256 MiB buffer), and the same row width,
# padded to a multiple of 128 columns: unaligned rows (60,502 x 4 bytes) slow MKL's GEMM by ~20 %.
CHUNK_BYTES = 256 * 2**20
PAD = 128


def class_sizes(n: int, classes: int, rng: np.random.Generator, lo: int = 2, hi: int = 12) -> np.ndarray:
    """Class sizes in [lo, hi] summing to n (SOP's test split: 2..12 images, mean 5.35)."""
    sizes = lo + rng.binomial(hi - lo, (n / classes - lo) / (hi - lo), classes)
    while (diff := n - int(sizes.sum())) != 0:
        step = 1 if diff > 0 else -1
        movable = np.flatnonzero(sizes < hi if step > 0 else sizes > lo)
        sizes[rng.choice(movable, min(abs(diff), len(movable)), replace=False)] += step
    return sizes


def make_data(n: int, dim: int, classes: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), class_sizes(n, classes, rng))
    rng.shuffle(labels)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    x = centres[labels] + noise * rng.standard_normal((n, dim), dtype=np.float32)
    return x, labels


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _pml_calculator(k: int | str, ks: tuple[int, ...]):
    """AccuracyCalculator, plus Recall@K metrics (any hit in the first K of its k-NN) when k covers them."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    def recall_at(cutoff: int):
        def calculate(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            knn, q = knn_labels[not_lone_query_mask], query_labels[not_lone_query_mask]
            return (knn[:, :cutoff] == q[:, None]).any(1).double().mean().item()
        return calculate

    names = [f"recall_at_{c}" for c in ks]
    methods = {f"calculate_{name}": recall_at(c) for name, c in zip(names, ks)}
    methods["requires_knn"] = lambda self: AccuracyCalculator.requires_knn(self) + names
    calculator_cls = type("AccuracyCalculatorWithRecall", (AccuracyCalculator,), methods)
    include = ("precision_at_1", "mean_average_precision_at_r", "r_precision") + tuple(names)
    return calculator_cls(include=include, k=k, device=torch.device("cpu"))


def run_child(method: str, data: Path) -> dict:
    """One method on the saved embeddings; returns seconds, peak extra MiB and its metrics."""
    import torch
    import torch.nn.functional as F

    from trainables.metrics import retrieval_metrics

    x = np.load(data / "x.npy")
    labels = np.load(data / "labels.npy")
    n = len(x)
    rows = max(1, CHUNK_BYTES // (4 * n))
    metrics: dict = {}
    if method.startswith("matmul"):
        xt = F.normalize(torch.from_numpy(x), dim=1)
        xn = xt.numpy()
    elif method.startswith("pml"):
        calc = _pml_calculator(max(KS) if method == "pml-k1000" else "max_bin_count",
                               KS if method == "pml-k1000" else ())
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _rss_kib("VmRSS")
    load = os.getloadavg()[0]
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    if method.startswith("matmul"):  # the buffer is allocated (and first touched) inside the timing, as in ours
        buf = torch.empty(rows, -(-n // PAD) * PAD)[:, :n]
        bufn = buf.numpy()
    if method == "matmul-torch":
        for lo in range(0, n, rows):
            q = xt[lo: lo + rows]
            torch.mm(q, xt.T, out=buf[: len(q)])
    elif method == "matmul-numpy":
        for lo in range(0, n, rows):
            q = xn[lo: lo + rows]
            np.matmul(q, xn.T, out=bufn[: len(q)])
    elif method in ("ours", "ours-recall"):
        metrics = retrieval_metrics(x, labels, KS, map_at_r=method == "ours")
    else:
        # PML compares raw embeddings (faiss IndexFlatL2); normalised inputs make L2 order = cosine order.
        xt = F.normalize(torch.from_numpy(x), dim=1)
        metrics = calc.get_accuracy(xt, torch.from_numpy(labels))
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    peak_extra = _rss_kib("VmHWM") - before
    return {"method": method, "seconds": seconds, "cpu_seconds": cpu, "load": load,
            "peak_extra_mib": peak_extra / 1024, "metrics": metrics}


def _cpu_seconds() -> float:
    """CPU time of this process: less disturbed than wall time when other jobs share the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> str:
    import torch

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name"))
        flags = next(line for line in lscpu if line.startswith("Flags"))
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu, isa = platform.processor() or "unknown CPU", "?"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu} ({isa}), {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6,000 x 128 smoke run instead of SOP's shape")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per method, interleaved; the table shows the fastest (shared machines are noisy)")
    parser.add_argument("--pml-repeats", type=int, default=1,
                        help="runs of each PML method (minutes each at full size)")
    parser.add_argument("--noise", type=float, help="override the shape's noise scale (Recall@1 falls as it grows)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.data)))
        return

    shape = dict(SHAPES["quick" if args.quick else "full"])
    shape["noise"] = args.noise or shape["noise"]
    print(f"machine: {machine()}")
    print(f"shape: {shape['n']:,} x {shape['dim']}, {shape['classes']:,} classes, noise {shape['noise']}; Ks {KS}")
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        x, labels = make_data(**shape)
        np.save(Path(tmp) / "x.npy", x)
        np.save(Path(tmp) / "labels.npy", labels)
        del x
        for i in range(max(args.repeats, args.pml_repeats)):
            for method in args.methods:
                if i >= (args.pml_repeats if method.startswith("pml") else args.repeats):
                    continue
                out = subprocess.run([sys.executable, __file__, "--child", method, "--data", tmp],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{method} failed:\n{out.stderr}")
                runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
                run = runs[method][-1]
                print(f"  {method}: {run['seconds']:.1f} s wall, {run['cpu_seconds']:.1f} s CPU, "
                      f"load {run['load']:.2f} at start", flush=True)

    best = {m: min(r, key=lambda run: run["seconds"]) for m, r in runs.items()}
    floor = best.get("matmul-torch")
    print(f"\n| method | wall s (best of {args.repeats}; PML {args.pml_repeats}) | x floor | CPU s | x floor (CPU) "
          "| peak extra MiB | load at start |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, run in best.items():
        ratio = f"{run['seconds'] / floor['seconds']:.2f}" if floor else "-"
        cpu_ratio = f"{run['cpu_seconds'] / floor['cpu_seconds']:.2f}" if floor else "-"
        print(f"| {LABELS[m]} | {run['seconds']:.1f} | {ratio} | {run['cpu_seconds']:.1f} | {cpu_ratio} "
              f"| {run['peak_extra_mib']:.0f} | {run['load']:.2f} |")

    ours, pml, pml_bin = (best.get(m, {}).get("metrics") for m in ("ours", "pml-k1000", "pml-maxbin"))
    if ours:
        print("\nours: " + ", ".join(f"{k} {v:.6f}" for k, v in ours.items()))
    for name, res in (("PML k=1000", pml), ("PML k=max_bin", pml_bin)):
        if ours and res:
            print(f"{name}: precision_at_1 {res['precision_at_1']:.6f} (ours recall@1 {ours['recall@1']:.6f}), "
                  f"MAP@R {res['mean_average_precision_at_r']:.6f} (ours {ours['map@r']:.6f}), "
                  f"R-precision {res['r_precision']:.6f} (ours {ours['r_precision']:.6f})"
                  + "".join(f", R@{k} {res[f'recall_at_{k}']:.6f} (ours {ours[f'recall@{k}']:.6f})"
                            for k in KS if f"recall_at_{k}" in res))


if __name__ == "__main__":
    main()
