"""How the search's best score depends on the trials in flight, without Ray: is it the driver or TPE?

    python bench/tpe_parallel.py --in-flight 16,64,102 --trials 2000 --seeds 0,1

bench/scale.py found a lower best score at 64 and 256 simulated slots than at 16 over 2,000 trials.
This drives the product's own search algorithm (PruningAwareOptunaSearch over the windowed TPE of
`tpe_sampler`, ResumableASHA, the study journal) through Tune's public Searcher and scheduler calls
in simulated time: N trials in flight, each epoch lasting a log-normal time (sigma 0.3), scored on
bench/scale_trial.py's surface. No process starts, nothing sleeps, so only the number in flight
and TPE's choices differ between rows. `--no-liar` repeats each row with constant liar off.
"""
from __future__ import annotations

import argparse
import heapq
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
from optuna.storages import JournalStorage
from ray.tune.schedulers import TrialScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_trial  # noqa: E402
from results import tables  # noqa: E402
from scale import best_of  # noqa: E402
from spaces import OptimiserDefaults, default_config, define_by_run  # noqa: E402
from trainables.config import SELECTION_METRIC, SELECTION_MODE  # noqa: E402
from trainables.searcher import PruningAwareOptunaSearch, ResumableASHA  # noqa: E402
from trainables.study import EPOCH, PAPER_DEFAULTS_ATTR, open_journal, study_name  # noqa: E402
from trainables.tune_search import tpe_sampler  # noqa: E402

MAX_T = 10


def simulate(in_flight: int, trials: int, seed: int, liar: bool = True) -> dict[str, float]:
    """One search of `trials` trials with `in_flight` at a time; its best config's true score."""
    defaults = OptimiserDefaults()
    run_dir = Path(tempfile.mkdtemp(prefix="tpe-parallel-"))
    journal = open_journal(run_dir)
    storage = JournalStorage(journal)
    name = study_name("softtriple", False)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.enqueue_trial(default_config("softtriple", defaults), user_attrs={PAPER_DEFAULTS_ATTR: True})
    sampler = tpe_sampler(trials, seed, constant_liar=liar)
    searcher = PruningAwareOptunaSearch(space=define_by_run("softtriple", defaults), metric=SELECTION_METRIC,
                                        mode=SELECTION_MODE, sampler=sampler, study_name=name, storage=storage,
                                        max_t=MAX_T, checkpoint_root=str(run_dir), retire=lambda location: None)
    asha = ResumableASHA(max_t=MAX_T, grace_period=1, reduction_factor=3)
    sim = scale_trial.SimSetup(epoch_seconds=1.0, max_t=MAX_T, seed=seed)  # its spread and noise; time is simulated
    rng = np.random.default_rng(seed)

    events: list[tuple[float, int, str]] = []  # (simulated time an epoch ends, tie-break, trial id)
    live: dict[str, tuple[SimpleNamespace, dict, int]] = {}
    started, now, wall = 0, 0.0, time.perf_counter()
    while started < trials or live:
        while started < trials and len(live) < in_flight:
            trial_id = f"t{started:05d}"
            config = searcher.suggest(trial_id)
            trial = SimpleNamespace(trial_id=trial_id)  # ASHA reads only the trial's id
            asha.on_trial_add(None, trial)
            live[trial_id] = (trial, config, 0)
            heapq.heappush(events, (now + scale_trial.epoch_length(sim, rng), started, trial_id))
            started += 1
        now, order, trial_id = heapq.heappop(events)
        trial, config, done = live[trial_id]
        epoch = done + 1
        result = {SELECTION_METRIC: scale_trial.true_score(config, epoch) + sim.noise * rng.standard_normal(),
                  EPOCH: epoch, "training_iteration": epoch}
        if epoch >= MAX_T or asha.on_trial_result(None, trial, result) == TrialScheduler.STOP:
            asha.on_trial_complete(None, trial, result)
            searcher.on_trial_complete(trial_id, result)
            del live[trial_id]
        else:
            searcher.on_trial_result(trial_id, result)
            live[trial_id] = (trial, config, epoch)
            heapq.heappush(events, (now + scale_trial.epoch_length(sim, rng), order, trial_id))
    journal.close()
    frame = tables.trials_frame(study, MAX_T)
    complete = int((frame["state"] == "complete").sum())
    return {**best_of(frame, MAX_T), "complete": complete, "seconds": time.perf_counter() - wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--in-flight", default="16,64,102")
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--no-liar", action="store_true", help="also run each row with constant liar off")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print("| in flight | constant liar | seed | best true score | its selected val | complete trials | seconds |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.in_flight.split(",")):
        for liar in (True, False) if args.no_liar else (True,):
            for seed in (int(s) for s in args.seeds.split(",")):
                r = simulate(n, args.trials, seed, liar)
                print(f"| {n} | {'on' if liar else 'off'} | {seed} | {r['best_true']:.4f} | {r['best_selected']:.4f} "
                      f"| {r['complete']} | {r['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
