"""Wall time of the default command, `python search.py --loss LOSS`, against its compute floor.

The floor is measured in the same run: one glyph epoch (train + validation) of the same
trainer on one thread, times the trial-epochs the search actually ran, divided by the cores
that run trials in parallel, plus the retrain's epochs. The ratio says how much of the wall
time is orchestration (Ray start-up, actors, checkpoints, the tail) rather than training.

    python bench/default_run.py               # softtriple, the issue's 3-minute goal
    python bench/default_run.py --loss ms --repeats 2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spaces import OptimiserDefaults, default_config  # noqa: E402
from trainables.config import TrainConfig  # noqa: E402
from trainables.data import build_dataset, recipe  # noqa: E402
from trainables.data.splits import fixed_split  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402


def epoch_seconds(loss: str, threads: int, classes: str) -> float:
    """Median seconds of one train+validate epoch of the paper-default config (3 epochs, first dropped)."""
    torch.set_num_threads(threads)
    rec = recipe("glyphs")
    ds = build_dataset("glyphs")
    split = fixed_split(ds.train_classes, 0.1, 0)
    fit = split.fit if classes == "fit" else split.fit + split.val
    cfg = TrainConfig.from_params(loss, default_config(loss, OptimiserDefaults(lr=rec.lr)), epochs=3,
                                  batch_size=rec.batch_size, embedding_size=rec.embedding_size)
    trainer = Trainer(cfg, ds.subset(fit, train=True))
    val = ds.subset(split.val)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        trainer.train_epoch()
        trainer.evaluate(val, rec.ks)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[0] if len(times) > 2 else times[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loss", default="softtriple")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "run"
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "search.py"), "--loss", args.loss, "--out", str(out)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            trials = pd.read_parquet(out / "trials.parquet")
            final = pd.read_parquet(out / "final.parquet")
            rows.append({"wall": wall, "trial_epochs": int(trials["epochs"].sum()),
                         "final_epochs": int(final["epochs"].sum()), "test_r1": float(final["test_recall@1"].mean())})
    trial_epoch = epoch_seconds(args.loss, 1, "fit")
    retrain_epoch = epoch_seconds(args.loss, cores, "all")
    print(f"machine: {cores} cores, torch {torch.__version__}; one epoch: {trial_epoch:.2f}s on 1 thread (trial), "
          f"{retrain_epoch:.2f}s on {cores} threads (retrain)")
    print(f"{'run':>3} {'wall s':>7} {'trial-epochs':>12} {'floor s':>8} {'wall/floor':>10} {'test R@1':>8}")
    for i, r in enumerate(rows, start=1):
        floor = r["trial_epochs"] * trial_epoch / cores + r["final_epochs"] * retrain_epoch
        print(f"{i:>3} {r['wall']:7.1f} {r['trial_epochs']:>12} {floor:8.1f} {r['wall'] / floor:10.2f} "
              f"{100 * r['test_r1']:8.2f}")


if __name__ == "__main__":
    main()
