"""Benchmark: orchestration overhead of the search (issue 7). Run by hand, not a test.

    python bench/overhead.py                 # glyphs, 8 trials, ASHA max_t 5, 2 slots: a few minutes
    python bench/overhead.py --variants shipped

overhead = 1 - sum(trial compute) / (slots x search wall time), where trial compute is the
train_seconds + eval_seconds every trial reported and the wall time is `run_search` on a
running Ray (ray.init is timed apart). Goal: <= 10 %. The script splits the slot-seconds that
were not trial compute into where they went, from the driver's view of each trial's start and end:

  in trials   inside a running trial but not training or evaluating: set-up (data set, models,
              torch's lazy imports; the first result's wait), then per epoch checkpoint save +
              upload and the round trip of each result through the driver;
  ramp-up     slots idle before every slot first had a trial (worker processes starting:
              Python, torch, Ray imports);
  gaps        slots idle between one trial's end and the next one's start while trials remained;
  tail        slots idle after the last trial started: the budget is spent, the promoted
              trials finish alone (ASHA's shape, not Ray's cost).
"start-up s/slot" is (ramp-up + set-up) in seconds per slot: what a slot pays before its first
epoch. It stays put from run to run, while the percentages move with each search's length (a
parallel search takes a different path every run).

The reference, measured in the same run: the *floor*, the seconds a fresh process without Ray takes
from its launch to where a trial's first epoch begins (Python, torch and our trainer imported, the
data set built, the model, loss and AdamW made, which imports torch._dynamo), one process per slot
launched together as the search's workers are. Any orchestrator that runs trials in processes it
starts pays it once per slot, so "floor overhead" = floor / (floor + compute per slot) is the
overhead such an orchestrator would show at no other cost, and "start-up / floor" is what Ray and
Tune add on top.

Each variant runs in its own process with its own Ray, so one cannot warm up the next. Variants
change only knobs Ray reads from the environment, on top of what run_search ships:
  shipped        run_search as it is;
  pending-1      Tune's default of one pending trial for a searcher (what run_search overrides);
  no-loggers     without Tune's JSON/CSV/TensorBoard result loggers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, dict[str, str]] = {
    "shipped": {},
    "pending-1": {"TUNE_MAX_PENDING_TRIALS_PG": "1"},
    "no-loggers": {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"},
}


def make_timeline() -> Any:
    """A Tune callback that records, per trial, when the driver saw it start and end, the compute it
    reported (train + eval seconds) and its set-up (start to the beginning of its first epoch)."""
    from ray import tune

    class Timeline(tune.Callback):
        def __init__(self) -> None:
            self.start: dict[str, float] = {}
            self.end: dict[str, float] = {}
            self.compute: dict[str, float] = {}
            self.set_up: dict[str, float] = {}  # trial start -> its first epoch began

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.start.setdefault(trial.trial_id, time.monotonic())

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            spent = result.get("train_seconds", 0.0) + result.get("eval_seconds", 0.0)
            if trial.trial_id not in self.set_up:
                self.set_up[trial.trial_id] = time.monotonic() - spent - self.start[trial.trial_id]
            self.compute[trial.trial_id] = self.compute.get(trial.trial_id, 0.0) + spent

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.end[trial.trial_id] = time.monotonic()

        on_trial_error = on_trial_complete

    return Timeline()


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One search in this process; returns its timeline and the overhead split."""
    import ray

    from spaces import OptimiserDefaults, default_config, define_by_run
    from trainables.ray_cluster import init_ray, trial_slots
    from trainables.trial import TrialSetup
    from trainables.tune_search import SearchSettings, run_search

    started = time.monotonic()
    init_ray(None, num_cpus=args.cpus)
    ray_init = time.monotonic() - started
    rec, dataset, split, fixed = glyph_trials(args)
    setup = TrialSetup(loss=args.loss, dataset="glyphs", data_root=None, image_size=rec.image_size,
                       folds=(split,), ks=rec.ks, fixed=fixed)
    defaults = OptimiserDefaults(lr=rec.lr)
    settings = SearchSettings(trials=args.trials, max_epochs=args.max_epochs, grace_period=1, reduction_factor=3,
                              seed=args.seed)
    slots = trial_slots(settings.cpus_per_trial, settings.gpus_per_trial)
    timeline = make_timeline()
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.monotonic()
        run_search(Path(run_dir), setup, define_by_run(args.loss, defaults), [default_config(args.loss, defaults)],
                   settings, echo=lambda line: None, callbacks=[timeline])
        t1 = time.monotonic()
    ray.shutdown()
    parts = split_overhead(timeline.start, timeline.end, timeline.compute, slots, t0, t1)
    return parts | {"ray_init": ray_init, "set-up": sum(timeline.set_up.values()) / (slots * parts["wall"])}


def glyph_trials(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(recipe, data set, split, fixed TrainConfig fields) of the searched glyph trials: the search and the floor alike."""
    from trainables.config import RECIPE_FIELDS
    from trainables.data import build_dataset, recipe
    from trainables.data.splits import fixed_split

    rec = recipe("glyphs")
    dataset = build_dataset("glyphs", None, rec.image_size)
    split = fixed_split(dataset.train_classes, 0.1, args.seed)
    # search.py's defaults on glyphs (RunConfig.train_fields), written out: importing search.py would add
    # the CLI's imports to the floor, which a trial never pays.
    fixed = {"batch_size": rec.batch_size, "embedding_size": rec.embedding_size, "backbone": rec.backbone,
             "seed": args.seed, "m_per_class": None, "grad_clip": 10.0, "pretrained": False, "num_workers": 0,
             **{k: getattr(rec, k) for k in RECIPE_FIELDS}}
    return rec, dataset, split, fixed | {"epochs": args.max_epochs}


def floor_child(args: argparse.Namespace) -> float:
    """Seconds from this process's launch (args.launched, wall clock) until a trial could start its first
    epoch, with no Ray: only what the trial itself needs is imported and built."""
    import torch

    from trainables.config import TrainConfig
    from trainables.trainer import Trainer

    torch.set_num_threads(1)  # as a trial of 1 CPU
    _, dataset, split, fixed = glyph_trials(args)
    cfg = TrainConfig.from_params(args.loss, json.loads(args.params), **fixed)
    Trainer(cfg, dataset.subset(split.fit, train=True))  # builds model, loss and AdamW (torch._dynamo)
    return time.time() - args.launched


def measure_floor(args: argparse.Namespace, env: dict[str, str], repeats: int = 3) -> float:
    """Median over `repeats` launches of `args.cpus` floor processes at once (as a search's workers start)."""
    from spaces import OptimiserDefaults, default_config
    from trainables.data import recipe

    params = json.dumps(default_config(args.loss, OptimiserDefaults(lr=recipe("glyphs").lr)))
    means = []
    for _ in range(repeats):
        argv = [sys.executable, __file__, "--floor", "--loss", args.loss, "--max-epochs", str(args.max_epochs),
                "--seed", str(args.seed), "--params", params, "--launched", str(time.time())]
        procs = [subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(args.cpus)]
        outs = [proc.communicate() for proc in procs]
        for proc, (out, err) in zip(procs, outs):
            if proc.returncode:
                sys.exit(f"floor process failed:\n{err[-3000:]}")
        means.append(sum(float(out.strip().splitlines()[-1]) for out, _ in outs) / len(outs))
    return sorted(means)[len(means) // 2]


def split_overhead(start: dict[str, float], end: dict[str, float], compute: dict[str, float], slots: int,
                   t0: float, t1: float) -> dict[str, Any]:
    """Slot-seconds of [t0, t1] as trial compute, in-trial overhead, and idle ramp-up / gaps / tail."""
    events = sorted([(t, +1) for t in start.values()] + [(t, -1) for t in end.values()])
    full = _first_full(events, slots, t1)
    last_start = max(start.values())
    idle = {"ramp-up": 0.0, "gaps": 0.0, "tail": 0.0}
    running, previous = 0, t0
    for t, step in [*events, (t1, 0)]:
        phase = "ramp-up" if previous < full else "tail" if previous >= last_start else "gaps"
        idle[phase] += max(0, slots - running) * (t - previous)
        running, previous = running + step, t
    wall = t1 - t0
    total_compute = sum(compute.values())
    in_trials = sum(end[k] - start[k] for k in start) - total_compute
    return {"trials": len(start), "slots": slots, "wall": wall, "compute": total_compute,
            "overhead": 1 - total_compute / (slots * wall), "in trials": in_trials / (slots * wall),
            **{k: v / (slots * wall) for k, v in idle.items()}}


def _first_full(events: list[tuple[float, int]], slots: int, default: float) -> float:
    """When every slot first had a trial running."""
    running = 0
    for t, step in events:
        running += step
        if running >= slots:
            return t
    return default


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=5)
    p.add_argument("--loss", default="proxy_anchor")
    p.add_argument("--cpus", type=int, default=2, help="Ray's CPUs = trial slots (1 CPU per trial)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)  # --floor: the trial's config, JSON
    p.add_argument("--launched", type=float, help=argparse.SUPPRESS)  # --floor: when the parent launched it
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.floor:
        print(floor_child(args))
        return
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    load = os.getloadavg()[0]
    floor = measure_floor(args, env)
    print(f"glyphs, {args.loss}, {args.trials} trials, ASHA max_t {args.max_epochs} (grace 1, reduction 3), "
          f"{args.cpus} slots of 1 CPU; load average {load:.1f} on {os.cpu_count()} cores at the start; "
          f"floor {floor:.1f} s per slot (a fresh process, no Ray, to its first epoch; median of 3)")
    header = ["variant", "wall s", "compute s", "overhead", "floor overhead", "in trials", "(of which set-up)",
              "ramp-up", "gaps", "tail", "start-up s/slot", "start-up / floor", "ray.init s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in args.variants:
        argv = [sys.executable, __file__, "--child", "--trials", str(args.trials), "--max-epochs",
                str(args.max_epochs), "--loss", args.loss, "--cpus", str(args.cpus), "--seed", str(args.seed)]
        done = subprocess.run(argv, env=env | VARIANTS[name], cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"variant {name} failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        start_up = (r["ramp-up"] + r["set-up"]) * r["wall"]  # seconds per slot before its first epoch
        floor_overhead = floor / (floor + r["compute"] / r["slots"])  # a zero-cost orchestrator starting processes
        pct = [f"{100 * v:.1f} %" for v in (r["overhead"], floor_overhead, r["in trials"], r["set-up"], r["ramp-up"],
                                             r["gaps"], r["tail"])]
        print(f"| {name} | {r['wall']:.1f} | {r['compute']:.1f} | " + " | ".join(pct)
              + f" | {start_up:.1f} | {start_up / floor:.2f} | {r['ray_init']:.1f} |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
