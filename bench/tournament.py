"""Benchmark: a loss tournament under one Tuner against the same losses searched one run after another
(issue 15). Run by hand, not a test.

    python bench/tournament.py                       # glyphs, every loss, the default budget: ~10 min
    python bench/tournament.py --losses ms,triplet --trials 4 --max-epochs 3     # a quick look

Each search runs in a fresh process with its own local Ray, as `search.py --loss all` and seven
`search.py --loss NAME` runs would: the tournament is one process, each single-loss search one more.
Only the search stage is compared (retrain and test are the same work either way). Per run:
  process s    launch to exit: Python and library imports, ray.init, the search, shutdown;
  search s     run_search / run_tournament on a running Ray (ray.init timed apart);
  overhead     bench/overhead.py's: 1 - sum(trial compute) / (slots x search wall time), split into
               in-trial, ramp-up, gaps and tail the same way.
The sequence's overhead pools its runs (their compute over their summed slot-seconds). Goals:
tournament overhead <= 10 %, tournament process time <= 0.8 x the sequence's. TPE and ASHA take
different paths in each run, so the compute differs a little between the two; the overhead is the
like-for-like figure.
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

from overhead import glyph_trials, make_timeline, split_overhead

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One search of `args.losses` in this process (a tournament if several); its overhead split."""
    import dataclasses

    import ray

    from spaces import OptimiserDefaults, default_config, define_by_run
    from trainables.ray_cluster import init_ray, trial_slots
    from trainables.trial import TrialSetup
    from trainables.tune_search import LossSearch, SearchSettings, run_search, run_tournament

    started = time.monotonic()
    init_ray(None, num_cpus=args.cpus)
    ray_init = time.monotonic() - started
    rec, _, split, fixed = glyph_trials(args)
    losses = args.losses.split(",")
    defaults = OptimiserDefaults(lr=rec.lr)
    setup = TrialSetup(loss=losses[0], dataset="glyphs", data_root=None, image_size=rec.image_size,
                       folds=(split,), ks=rec.ks, fixed=fixed)
    settings = SearchSettings(trials=args.trials, max_epochs=args.max_epochs, seed=args.seed)
    timeline = make_timeline()
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.monotonic()
        if len(losses) == 1:
            run_search(Path(run_dir), setup, define_by_run(losses[0], defaults),
                       [default_config(losses[0], defaults)], settings, echo=lambda line: None, callbacks=[timeline])
        else:
            searches = [LossSearch(loss, define_by_run(loss, defaults), [default_config(loss, defaults)])
                        for loss in losses]
            run_tournament(Path(run_dir), dataclasses.replace(setup, loss=None), searches, settings,
                           echo=lambda line: None, callbacks=[timeline])
        t1 = time.monotonic()
    slots = trial_slots(settings.cpus_per_trial, settings.gpus_per_trial)
    ray.shutdown()
    return split_overhead(timeline.start, timeline.end, timeline.compute, slots, t0, t1) | {"ray_init": ray_init}


def launch(args: argparse.Namespace, losses: list[str], env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", "--losses", ",".join(losses), "--trials", str(args.trials),
            "--max-epochs", str(args.max_epochs), "--cpus", str(args.cpus), "--seed", str(args.seed)]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"search of {','.join(losses)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"process": time.monotonic() - started}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs one after another as one: times and trials add up, shares weigh by each run's slot-seconds."""
    slot_seconds = [r["slots"] * r["wall"] for r in runs]
    total = sum(slot_seconds)
    shares = {k: sum(r[k] * s for r, s in zip(runs, slot_seconds)) / total
              for k in ("overhead", "in trials", "ramp-up", "gaps", "tail")}
    sums = {k: sum(r[k] for r in runs) for k in ("trials", "wall", "compute", "process", "ray_init")}
    return sums | shares


def row(name: str, r: dict[str, Any]) -> str:
    pct = " | ".join(f"{100 * r[k]:.1f} %" for k in ("overhead", "in trials", "ramp-up", "gaps", "tail"))
    return (f"| {name} | {r['trials']} | {r['process']:.0f} | {r['wall']:.0f} | {r['compute']:.0f} | {pct} "
            f"| {r['ray_init']:.1f} |")


def main() -> None:
    from trainables.losses import LOSSES
    from spaces import SPACES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--losses", default=",".join(sorted(set(LOSSES) & set(SPACES))))
    p.add_argument("--trials", type=int, default=8, help="per loss (search.py's default)")
    p.add_argument("--max-epochs", type=int, default=10, help="ASHA max_t (search.py's default)")
    p.add_argument("--cpus", type=int, default=2, help="Ray's CPUs = trial slots (1 CPU per trial)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    losses = args.losses.split(",")
    print(f"glyphs, {len(losses)} losses x {args.trials} trials, ASHA max_t {args.max_epochs} (grace 1, reduction 3), "
          f"{args.cpus} slots of 1 CPU; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    tournament = launch(args, losses, env)
    singles = {loss: launch(args, [loss], env) for loss in losses}
    sequence = pooled(list(singles.values()))
    header = ["run", "trials", "process s", "search s", "compute s", "overhead", "in trials", "ramp-up", "gaps",
              "tail", "ray.init s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print(row(f"tournament ({len(losses)} losses, one process)", tournament))
    print(row(f"sequence of {len(losses)} single-loss runs", sequence))
    for loss, r in singles.items():
        print(row(f"  {loss}", r))
    print(f"tournament / sequence: process time {tournament['process'] / sequence['process']:.2f}x, search time "
          f"{tournament['wall'] / sequence['wall']:.2f}x (goal <= 0.8x); tournament overhead "
          f"{100 * tournament['overhead']:.1f} % (goal <= 10 %), sequence {100 * sequence['overhead']:.1f} %")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
