"""ASHA + pruning-aware TPE against TPE with every trial at the full budget, on glyphs, through the real pipeline.

    python bench/asha.py            # 3 seeds x 2 arms x 12 trials of up to 9 epochs: 50 min on a busy 2-core CPU
    python bench/asha.py --quick    # 1 seed x 2 arms x 4 trials of up to 3 epochs: a smoke run

Each arm is `search.main` (search, select, retrain, test once) with the same seed, trials and
budget. The full-budget arm is the same pipeline with `--grace-period` equal to `--max-epochs`:
ASHA then has no rung below the budget, stops nothing (a FIFO schedule) and Optuna sees every
trial COMPLETE. One seed gives both arms the same validation classes, so their scores compare.

Per seed the target is the best validation Recall@1 of the full-budget arm minus 1 point. "Epochs
to target" counts trial-epochs in the order Optuna proposed the trials (every epoch of earlier
trials, then the epochs of the first trial that reaches the target up to that epoch): the budget a
sequential search spends, independent of how many trials ran side by side or of machine load.
The paper's defaults run first and identically in both arms; where they alone reach the target,
both arms need the same epochs, so the count is also given without the defaults trial ("search
only"): the epochs the search itself needs to find a config that good.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import search  # noqa: E402
from results import report_data, tables  # noqa: E402
from trainables.config import SELECTION_METRIC  # noqa: E402
from trainables.run_config import RunConfig  # noqa: E402

CURVE = f"{SELECTION_METRIC}_curve"
TARGET_GAP = 0.01  # one Recall@1 point below the best full-budget validation score
SHAPES = {"full": {"seeds": 3, "trials": 12, "max_epochs": 9},
          "quick": {"seeds": 1, "trials": 4, "max_epochs": 3}}


def epochs_to_reach(trials: pd.DataFrame, target: float) -> int | None:
    """Trial-epochs, in proposal order, until some trial's validation R@1 reaches `target`; None if never."""
    spent = 0
    for _, trial in trials.sort_values("number").iterrows():
        for epoch, value in enumerate(trial[CURVE], start=1):
            if value >= target:
                return spent + epoch
        spent += int(trial["epochs"])
    return None


def run_arm(out: Path, loss: str, seed: int, trials: int, max_epochs: int, full_budget: bool) -> dict:
    """One pipeline run; its search output goes to out/search.log."""
    grace = max_epochs if full_budget else 1
    argv = ["--loss", loss, "--trials", str(trials), "--max-epochs", str(max_epochs), "--grace-period", str(grace),
            "--reduction-factor", "3", "--top-k", "1", "--seeds", "1", "--seed", str(seed), "--out", str(out)]
    start = time.perf_counter()
    out.mkdir(parents=True)
    with open(out / "search.log", "w", buffering=1) as log, contextlib.redirect_stdout(log):  # followable: tail -f
        code = search.main(argv)
    if code != 0:
        raise RuntimeError(f"search.main({' '.join(argv)}) exited with {code}; see {out / 'search.log'}.")
    return read_arm(out) | {"seconds": time.perf_counter() - start}


def read_arm(out: Path) -> dict:
    """What the comparison needs from a finished run directory."""
    table = pd.read_parquet(out / "trials.parquet")
    final = pd.read_parquet(out / "final.parquet")
    cmd = RunConfig.from_json(json.loads((out / "config.json").read_text())["command"])
    defaults = report_data.defaults_trial(tables.load_study(out), cmd)
    return {"trials": table, "defaults": defaults, "epochs": int(table["epochs"].sum()),
            "best_val": float(table[f"best_{SELECTION_METRIC}"].max()), "test_r1": float(final["test_recall@1"].mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 4 trials of up to 3 epochs: a smoke run")
    p.add_argument("--loss", default="proxy_anchor", choices=search.LOSS_CHOICES)
    p.add_argument("--out", type=Path, help="where the runs go (default runs/bench-asha-<timestamp>)")
    args = p.parse_args()
    shape = SHAPES["quick" if args.quick else "full"]
    out = args.out or ROOT / "runs" / f"bench-asha-{datetime.now():%Y%m%d-%H%M%S}"
    rows = []
    for seed in range(shape["seeds"]):
        arms = {}
        for name, full_budget in (("full budget", True), ("ASHA", False)):
            print(f"seed {seed}, {name}: {shape['trials']} trials of up to {shape['max_epochs']} epochs ...",
                  flush=True)
            arms[name] = run_arm(out / f"seed{seed}-{'fifo' if full_budget else 'asha'}", args.loss, seed,
                                 shape["trials"], shape["max_epochs"], full_budget)
        target = arms["full budget"]["best_val"] - TARGET_GAP
        for name, arm in arms.items():
            search_only = arm["trials"][arm["trials"]["number"] != arm["defaults"]]
            rows.append({"seed": seed, "arm": name, "target": target,
                         "to_target": epochs_to_reach(arm["trials"], target),
                         "to_target_search": epochs_to_reach(search_only, target),
                         **{k: arm[k] for k in ("epochs", "best_val", "test_r1", "seconds")}})
    print_table(pd.DataFrame(rows), args.loss, shape, out)


def print_table(rows: pd.DataFrame, loss: str, shape: dict, out: Path) -> None:
    """Markdown: one row per (seed, arm), then the ASHA/full-budget epoch ratios."""
    print(f"\n{loss} on glyphs, {shape['trials']} trials, max {shape['max_epochs']} epochs, ASHA grace 1 reduction 3; "
          f"runs in {out}\n")
    print("| seed | arm | trial-epochs | val R@1 best | target (best full − 1) | epochs to target | "
          "search only | test R@1 | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for _, r in rows.iterrows():
        reached = ["not reached" if pd.isna(r[c]) else f"{int(r[c])}" for c in ("to_target", "to_target_search")]
        print(f"| {r['seed']} | {r['arm']} | {r['epochs']} | {100 * r['best_val']:.2f} | {100 * r['target']:.2f} | "
              f"{reached[0]} | {reached[1]} | {100 * r['test_r1']:.2f} | {r['seconds']:.0f} |")
    print()
    for column, what in (("to_target", "epochs to target"), ("to_target_search", "epochs to target, search only")):
        ratios = []
        for _, pair in rows.groupby("seed"):
            asha, fifo = pair[pair["arm"] == "ASHA"].iloc[0], pair[pair["arm"] == "full budget"].iloc[0]
            if not (pd.isna(asha[column]) or pd.isna(fifo[column])):
                ratios.append(asha[column] / fifo[column])
        print(f"ASHA / full budget, {what}: " + (
            f"mean {100 * statistics.mean(ratios):.0f}% ({', '.join(f'{100 * x:.0f}%' for x in ratios)}; seeds "
            "where both arms reached it)" if ratios else "no seed where both arms reached it") + " (goal ≤ 40%)")
    epochs = {arm: group["epochs"].to_numpy() for arm, group in rows.groupby("arm")}  # in seed order
    totals = epochs["ASHA"] / epochs["full budget"]
    print(f"ASHA / full budget, all trial-epochs run: mean {100 * totals.mean():.0f}%")
    test = rows.groupby("arm")["test_r1"].agg(["mean", "std"]) * 100
    print("test R@1 (mean ± std over seeds): " + "; ".join(
        f"{arm} {m:.2f} ± {0 if pd.isna(s) else s:.2f}" for arm, (m, s) in test.iterrows()))


if __name__ == "__main__":
    main()
