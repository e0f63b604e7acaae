"""Cluster scale, simulated: can the driver keep hundreds of trial slots busy through thousands of trials?

    python bench/scale.py --quick                         # 64 slots, 300 trials, < 5 min
    python bench/scale.py --slots 16,64,256 --trials 2000 --reference <git ref>

The project's real driver side runs (run_search: the pruning-aware Optuna searcher, resumable ASHA,
the study record, the progress lines, per-epoch checkpoints; then trials.parquet) with simulated trials
(bench/scale_trial.py) that sleep through their epochs and score on a synthetic surface over
softtriple's space. Each configuration runs in a fresh process (its own local Ray, its own peak
memory). `--reference REF` runs the same configurations on the product as of git REF first (the
"before"), unpacked into a temporary directory, so before and after come from one run.

Slots: a Tune trial is a Ray actor of ~115 MB (PSS, measured here), so this machine holds ~100, not
256. A configuration with more slots than `--max-actors` runs that many actors with epochs shortened
by actors/slots: the driver then sees the results and new trials per second of the full slot count
at the stated epoch length, and each driver delay costs a larger share of a shorter epoch (the
utilisation it measures is a lower bound). It does not have the full count of trials in flight.

Utilisation (busy slot-seconds / slot-seconds) is given over two spans. The saturated window runs
from the moment every actor has run an epoch to the start of the last trial: within it an idle slot
waits for the driver or Ray, never for its process to start nor for work ("n/a" where it never held,
e.g. actors still starting when the last trial began). The whole run adds the start-up and ASHA's
tail (the last promoted trials running on while the other slots have no trial left); its
actor-seconds are split into busy, start-up, idle between epochs of a trial, between trials, tail.
The last line gives the saturated window's figure.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ACTOR_MB = 115  # PSS of one idle Tune function-trainable actor here (probe: 16 actors, 2026-12-01)
MAX_EPOCHS = 10
ASK_MARKS = (100, 500, 1000, 2000)


# --------------------------------------------------------------------------------------------- child

class Timings:
    """Thread-CPU seconds of wrapped driver calls, by name, and each ask's latency by study size."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.asks: list[tuple[int, float, float]] = []  # (trials in the study before it, wall s, thread CPU s)
        self.writes: list[float] = []  # wall seconds of each storage write (outermost call only)
        self._depth = 0

    def wrap(self, cls: type, method: str, name: str, on_done: Callable[[float, float], None] | None = None) -> None:
        inner = cls.__dict__.get(method)
        if inner is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = self._depth == 0 or name != "storage write"
            self._depth += name == "storage write"
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._depth -= name == "storage write"
                if outer:
                    cpu = time.thread_time() - cpu
                    self.cpu[name] += cpu
                    self.calls[name] += 1
                    if on_done:
                        on_done(time.perf_counter() - wall, cpu)

        setattr(cls, method, timed)


STORAGE_WRITES = ("create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
                  "set_trial_user_attr", "set_trial_system_attr")


def instrument(timings: Timings, searcher_cls: type, scheduler_cls: type, progress_cls: type) -> None:
    """Wrap the driver's per-result and per-trial calls with CPU timers (measurement only)."""
    import optuna

    timings.wrap(searcher_cls, "suggest", "ask (searcher.suggest)",
                 lambda wall, cpu: timings.asks.append((timings.calls["ask (searcher.suggest)"], wall, cpu)))
    timings.wrap(searcher_cls, "on_trial_result", "searcher.on_trial_result")
    timings.wrap(searcher_cls, "on_trial_complete", "searcher.on_trial_complete")
    from ray.tune.schedulers import AsyncHyperBandScheduler
    for cls in (scheduler_cls, AsyncHyperBandScheduler):
        timings.wrap(cls, "on_trial_result", "scheduler.on_trial_result")
    timings.wrap(progress_cls, "on_trial_result", "progress.on_trial_result")
    timings.wrap(progress_cls, "on_trial_complete", "progress.on_trial_complete")
    timings.wrap(optuna.samplers.TPESampler, "sample_relative", "TPE sample_relative")
    storages = [optuna.storages.RDBStorage, optuna.storages.InMemoryStorage, optuna.storages.JournalStorage,
                optuna.storages._CachedStorage]
    for cls in storages:
        for method in STORAGE_WRITES:
            timings.wrap(cls, method, "storage write", lambda wall, cpu: timings.writes.append(wall))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration: a local Ray with `actors` CPUs, run_search over simulated trials, the figures."""
    import ray
    from ray import tune
    from ray.cloudpickle import register_pickle_by_value

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scale_trial
    from spaces import OptimiserDefaults, default_config, define_by_run
    from trainables import tune_search as product
    from trainables.progress import ProgressLines
    from trainables.ray_cluster import init_ray
    from trainables.searcher import PruningAwareOptunaSearch, ResumableASHA
    from results import tables

    register_pickle_by_value(scale_trial)  # workers need not find bench/ on their path
    timings = Timings()
    instrument(timings, PruningAwareOptunaSearch, ResumableASHA, ProgressLines)
    samples: list[tuple[float, float, int]] = []  # (wall, driver process CPU, trials started) at each result
    busy: list[tuple[float, float, int, str]] = []  # (start, end, pid, trial id) of each simulated epoch
    first_start: dict[str, float] = {}  # trial id -> its first epoch's start
    torch_loaded: list[bool] = []

    class Log(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            samples.append((time.time(), time.process_time(), len(trials)))
            busy.append((result["busy_start"], result["busy_end"], result["pid"], trial.trial_id))
            first_start.setdefault(trial.trial_id, result["busy_start"])
            torch_loaded.append(result["torch_loaded"])

    defaults = OptimiserDefaults()
    setup = scale_trial.SimSetup(epoch_seconds=spec["epoch_seconds"], max_t=MAX_EPOCHS, seed=spec["seed"])
    settings = product.SearchSettings(trials=spec["trials"], max_epochs=MAX_EPOCHS, seed=spec["seed"])
    lines: list[str] = []
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True)
    init_ray(None, num_cpus=spec["actors"])  # the product's local Ray, with one logical CPU per actor
    copy_seconds: list[float] = []
    if hasattr(product, "write_dashboard_copy"):  # the study.db copy written when the search ends
        copy = product.write_dashboard_copy

        def timed_copy(run_dir: Path) -> None:
            start = time.perf_counter()
            copy(run_dir)
            copy_seconds.append(time.perf_counter() - start)

        product.write_dashboard_copy = timed_copy
    machine0, wall0, cpu0 = machine_cpu(), time.time(), time.process_time()
    product.run_search(run_dir, setup, define_by_run("softtriple", defaults),
                       [default_config("softtriple", defaults)], settings, lines.append, [Log()],
                       trial=scale_trial.sim_trial)
    wall1, cpu1, machine1 = time.time(), time.process_time(), machine_cpu()
    frame = tables.trials_frame(tables.load_study(run_dir), MAX_EPOCHS)
    tables.write(frame, run_dir / "trials.parquet")
    ray.shutdown()

    # Saturated window: every actor has run an epoch .. the last trial began. Where it never held,
    # the driver's CPU per result is taken over the whole run.
    window = saturated_window(busy, first_start, spec["actors"])
    utilisation, window_s, driver_ms = None, 0.0, 1000 * (cpu1 - cpu0) / len(samples)
    if window:
        t0, t1 = window
        window_s = t1 - t0
        utilisation = sum(max(0.0, min(e, t1) - max(s, t0)) for s, e, _, _ in busy) / (spec["actors"] * window_s)
        times = [sample[0] for sample in samples]
        i0, i1 = bisect.bisect_left(times, t0), bisect.bisect_right(times, t1) - 1
        driver_ms = 1000 * (samples[i1][1] - samples[i0][1]) / max(i1 - i0, 1)
    whole = sum(e - s for s, e, _, _ in busy)
    # Driver CPU per result as the study grows: bins of trials started.
    step = max(spec["trials"] // 4, 1)
    bins: dict[int, list[float]] = defaultdict(list)
    for (_, c0, _), (_, c1, n) in zip(samples, samples[1:]):
        bins[min((n - 1) // step, 3)].append(c1 - c0)
    asks, ask_cpu = {}, {}
    for mark in ASK_MARKS:
        near = [(wall, cpu) for n, wall, cpu in timings.asks if abs(n - mark) <= max(25, mark // 20)]
        if near and mark <= spec["trials"]:
            asks[mark] = 1000 * median(w for w, _ in near)
            ask_cpu[mark] = 1000 * median(c for _, c in near)
    states = frame["state"].value_counts().to_dict()
    return {
        "slots": spec["slots"], "actors": spec["actors"], "trials": len(frame), "states": states,
        "epoch_seconds": spec["epoch_seconds"], "wall_s": wall1 - wall0, "results": len(samples),
        "utilisation": utilisation, "window_s": window_s,
        "utilisation_whole": whole / (spec["actors"] * (wall1 - wall0)),
        "driver_cpu_s": cpu1 - cpu0, "driver_ms_per_result": driver_ms,
        "driver_ms_per_result_bins": {f"{b * step}-{(b + 1) * step}": 1000 * sum(v) / len(v)
                                      for b, v in sorted(bins.items())},
        "ms_per_call": {k: 1000 * timings.cpu[k] / timings.calls[k] for k in sorted(timings.cpu)},
        "calls_per_result": {k: timings.calls[k] / len(samples) for k in sorted(timings.calls)},
        "ask_ms": asks, "ask_cpu_ms": ask_cpu, "write_ms_median": 1000 * median(timings.writes) if timings.writes else None,
        "writes_per_result": len(timings.writes) / len(samples),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine_busy": (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1) * (os.cpu_count() or 1),
        "load": os.getloadavg(), "torch_in_trials": any(torch_loaded),
        **best_of(frame, MAX_EPOCHS), "progress_lines": len(lines),
        "study_mb": sum(p.stat().st_size for p in run_dir.glob("study*")) / 2**20,
        "dashboard_copy_s": sum(copy_seconds),
        "idle": idle_breakdown(busy, spec["actors"], wall0, wall1),
    }


def best_of(frame: Any, max_t: int) -> dict[str, float]:
    """The config the product's selection picks from a trials table: its validation score and the
    surface's noise-free score for it at `max_t` epochs (what a better search would raise)."""
    import scale_trial
    from results import tables
    from results.select import select_top
    from trainables.config import SELECTION_METRIC

    best = select_top(frame, 1).iloc[0]
    params = {k.removeprefix("param_"): best[k] for k in tables.param_columns(frame)}
    return {"best_selected": float(best[f"best_{SELECTION_METRIC}"]),
            "best_true": scale_trial.true_score(params, max_t)}


def epochs_by_actor(busy: list[tuple[float, float, int, str]]) -> dict[int, list[tuple[float, float, str]]]:
    """Each actor's (start, end, trial id) epochs, in time order."""
    by_actor: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for s, e, pid, trial in busy:
        by_actor[pid].append((s, e, trial))
    return {pid: sorted(epochs) for pid, epochs in by_actor.items()}


def saturated_window(busy: list[tuple[float, float, int, str]], first_start: dict[str, float],
                     actors: int) -> tuple[float, float] | None:
    """(t0, t1): from the moment every actor has run an epoch to the start of the last trial.

    Inside it an idle slot waits for the driver or Ray, never for start-up or for work. None
    when it never held: some actor never ran, or the last trial began before the last actor did.
    """
    by_actor = epochs_by_actor(busy)
    if len(by_actor) < actors:
        return None
    t0, t1 = max(epochs[0][0] for epochs in by_actor.values()), max(first_start.values())
    return (t0, t1) if t1 > t0 else None


def idle_breakdown(busy: list[tuple[float, float, int, str]], actors: int, wall0: float,
                   wall1: float) -> dict[str, float]:
    """Where the actors' seconds of the whole run went, as fractions of actors x wall (they sum to 1).

    start-up: before an actor's first epoch (Ray starting the worker, the first trial's set-up; an
    actor that never ran counts whole); between epochs of one trial and between trials on one actor
    (the report, the driver's round trip, the next trial's reset); tail: after an actor's last epoch.
    """
    by_actor = epochs_by_actor(busy)
    seconds = defaultdict(float)
    seconds["start-up"] = (actors - len(by_actor)) * (wall1 - wall0)
    for epochs in by_actor.values():
        seconds["busy"] += sum(e - s for s, e, _ in epochs)
        seconds["start-up"] += epochs[0][0] - wall0
        seconds["tail"] += wall1 - epochs[-1][1]
        for (_, e0, a), (s1, _, b) in zip(epochs, epochs[1:]):
            seconds["within a trial" if a == b else "between trials"] += s1 - e0
    return {k: v / (actors * (wall1 - wall0)) for k, v in seconds.items()}


# -------------------------------------------------------------------------------------------- parent

def product_tree(ref: str | None, into: Path) -> Path:
    """This checkout, or the product as of git `ref` unpacked into `into` (bench files stay current)."""
    if ref is None:
        return REPO
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    tree = into / "reference"
    tree.mkdir()
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def run_config(tree: Path, spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0")
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=tree,
                          capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"error: the {spec['slots']}-slot configuration failed (exit {done.returncode}).")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64 slots, 300 trials")
    p.add_argument("--slots", default="16,64,256", help="comma-separated slot counts")
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--epoch-seconds", type=float, default=10.0, help="mean simulated epoch at full scale")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every epoch by this (printed), to fit small slot counts in the time at hand")
    p.add_argument("--max-actors", type=int,
                   help=f"most Ray actors at once (default: half the available memory / {ACTOR_MB} MB)")
    p.add_argument("--reference", help="git ref of the product to measure first, as 'before'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write every configuration's figures here as JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.slots, args.trials = "64", 300
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    slots = [int(s) for s in args.slots.split(",")]
    max_actors = args.max_actors or int(available_mb() / 2 / ACTOR_MB)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
          f"{available_mb() / 1024:.1f} GiB available; at most {max_actors} actors ({ACTOR_MB} MB each)")
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        trees = [("before", product_tree(args.reference, Path(tmp)))] if args.reference else []
        trees.append(("after" if args.reference else "this", REPO))
        for n in slots:
            actors = min(n, max_actors)
            seconds = args.epoch_seconds * args.time_scale * actors / n
            print(f"\n{n} slots, {args.trials} trials: {actors} actors, simulated epoch {seconds:.2f} s "
                  f"(= {args.epoch_seconds:g} s x time scale {args.time_scale:g} x actors/slots {actors}/{n})")
            for label, tree in trees:
                spec = {"slots": n, "actors": actors, "trials": args.trials, "epoch_seconds": seconds,
                        "seed": args.seed, "run_dir": f"{tmp}/{label}-{n}"}
                row = run_config(tree, spec)
                rows.append((label, row))
                print(describe(label, row))
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows))
    last = rows[-1][1]
    print(f"slots={last['slots']} trials={last['trials']} utilisation={fraction(last['utilisation'])} "
          f"driver_ms_per_result={last['driver_ms_per_result']:.1f}")
    return 0


def describe(label: str, r: dict[str, Any]) -> str:
    asks = ", ".join(f"{k}: {v:.0f} ({r['ask_cpu_ms'][k]:.1f} CPU)" for k, v in r["ask_ms"].items())
    bins = ", ".join(f"{k}: {v:.1f}" for k, v in r["driver_ms_per_result_bins"].items())
    calls = ", ".join(f"{k} {v:.2f} ms x{r['calls_per_result'][k]:.2f}" for k, v in r["ms_per_call"].items())
    return (f"  [{label}] wall {r['wall_s']:.0f} s, {r['results']} results, states {r['states']}\n"
            f"    utilisation {fraction(r['utilisation'])} over the saturated window ({r['window_s']:.0f} s), "
            f"{r['utilisation_whole']:.3f} over the whole run; the whole run's actor-seconds: "
            + ", ".join(f"{k} {v:.3f}" for k, v in r["idle"].items()) + "\n"
            f"    driver CPU {r['driver_cpu_s']:.0f} s, {r['driver_ms_per_result']:.1f} ms/result in the window; "
            f"by trials started: {bins}\n"
            f"    ask ms (wall, median) at study size: {asks}; storage writes/result {r['writes_per_result']:.1f}, "
            f"median write {r['write_ms_median'] or 0:.2f} ms\n"
            f"    per call (thread CPU ms x calls per result): {calls}\n"
            f"    driver peak {r['peak_mb']:.0f} MB, study files {r['study_mb']:.1f} MB (study.db copy "
            f"{r.get('dashboard_copy_s', 0):.1f} s after the search), machine busy "
            f"{r['machine_busy']:.2f} of {os.cpu_count()} cores, load {r['load'][0]:.1f}, torch in trials: "
            f"{r['torch_in_trials']}\n"
            f"    best: selected val {r['best_selected']:.4f}, its true score {r['best_true']:.4f} (optimum 0.7 at t=inf)")


def fraction(x: float | None) -> str:
    """A utilisation, or 'n/a' where its window never held (see saturated_window)."""
    return "n/a" if x is None else f"{x:.3f}"


def capacity(ms_per_result: float, epoch_s: float, target: float = 0.95) -> int:
    """Most slots one driver core keeps `target` busy (arithmetic, M/M/1 queue at the driver).

    A result waits c / (1 - rho) for the driver (c its CPU cost, rho the driver's load); a slot
    idles that long per epoch, so target busy needs c / (1 - rho) <= (1 - target) * epoch, and
    the slots are rho * epoch / c.
    """
    c = ms_per_result / 1000
    rho = 1 - c / ((1 - target) * epoch_s)
    return max(0, int(rho * epoch_s / c))


def print_table(rows: list[tuple[str, dict[str, Any]]]) -> None:
    print("\n| product | slots | actors | epoch s | trials | utilisation | whole run | driver ms/result "
          "| ask ms @100/500/1000/2000 | writes/result | peak MB | best true | cap. 30 s | cap. 300 s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for label, r in rows:
        asks = "/".join(f"{r['ask_ms'].get(str(m), r['ask_ms'].get(m, float('nan'))):.0f}" for m in ASK_MARKS)
        c = r["driver_ms_per_result"]
        print(f"| {label} | {r['slots']} | {r['actors']} | {r['epoch_seconds']:.2f} | {r['trials']} "
              f"| {fraction(r['utilisation'])} | {r['utilisation_whole']:.3f} | {c:.1f} | {asks} "
              f"| {r['writes_per_result']:.1f} | {r['peak_mb']:.0f} | {r['best_true']:.4f} "
              f"| {capacity(c, 30)} | {capacity(c, 300)} |")


if __name__ == "__main__":
    sys.exit(main())
