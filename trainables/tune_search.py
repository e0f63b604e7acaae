"""The study under Ray Tune: TPE proposals, ASHA stopping, trials in parallel, resumed where a driver left off.

`run_search` (one loss) and `run_tournament` (several losses, trainables/tournament.py) wire the
pieces together: the trial function (trainables/trial.py), the resumable searcher and scheduler
(trainables/searcher.py), the progress lines (trainables/progress.py) and the Ray cluster
(trainables/ray_cluster.py). Optuna proposes the configs (TPE, define-by-run
space), ASHA stops weak trials at its rungs (docs/ray-optuna.md).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import JsonLoggerCallback

from trainables.config import SELECTION_METRIC, SELECTION_MODE
from trainables.private_api import reopen_trial
from trainables.progress import ProgressLines
from trainables.ray_cluster import init_ray, is_uri, trial_slots
from trainables.ray_data import share
from trainables.sampler import WindowedTPESampler
from trainables.searcher import PruningAwareOptunaSearch, ResumableASHA, delete_checkpoint, last_checkpoint
from trainables.slots import SlotLimiter, request_slots
from trainables.study import (DIVERGED, PAPER_DEFAULTS_ATTR, RERUN_ATTR, WriteBehindJournal, open_journal, study_name,
                              write_dashboard_copy)
from trainables.tournament import PerLossASHA, TournamentSearch
from trainables.trial import TrialSetup, run_trial

EXPERIMENT_DIR = "ray"
PENDING_ENV = "TUNE_MAX_PENDING_TRIALS_PG"  # Tune's limit on trials waiting for an actor (a user's value wins)
SNAPSHOT_ENV = "TUNE_GLOBAL_CHECKPOINT_S"  # how often Tune saves its experiment state (a user's value wins)
SNAPSHOT_SECONDS = 600


@dataclass(frozen=True)
class SearchSettings:
    """How to search: budget, ASHA shape, resources and where Ray keeps its files."""

    trials: int  # the study's whole budget, counting trials an earlier driver already finished
    max_epochs: int
    grace_period: int = 1
    reduction_factor: int = 3
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    seed: int = 0
    storage_path: str | None = None  # Ray's trial storage (a path or URI all nodes reach); None: the run dir
    address: str | None = None  # the Ray cluster to join; None: start a local Ray (unless one is running)
    dashboard: bool = False  # local Ray only: its dashboard, on 127.0.0.1


def tpe_sampler(trials: int, seed: int, constant_liar: bool = True) -> optuna.samplers.TPESampler:
    """TPE whose random start-up phase fits the budget (Optuna's default of 10 would be all of a small study),
    modelling a bounded window of the study, so a proposal at 2,000 trials costs what one at 1,000 does."""
    return WindowedTPESampler(seed=seed, multivariate=True, constant_liar=constant_liar,
                              n_startup_trials=max(2, min(10, trials // 3)))


def experiment_location(run_dir: Path, storage_path: str | None) -> tuple[str, str]:
    """(storage, experiment name) of the study's Ray experiment: <run dir>/ray, or <storage>/<run name>
    when the trials write to storage every node reaches (one bucket or share can hold many runs)."""
    if storage_path is None:
        return str(run_dir.resolve()), EXPERIMENT_DIR
    storage = storage_path.rstrip("/") if is_uri(storage_path) else str(Path(storage_path).expanduser().resolve())
    return storage, run_dir.resolve().name


def _trial_dirname(trial: Trial) -> str:
    """A trial's directory is its id, so a result's checkpoint path is known from the result alone."""
    return trial.trial_id


def settle_earlier_drivers(study: optuna.Study, trials: int) -> tuple[list[FrozenTrial], list[FrozenTrial],
                                                                       list[dict[str, Any]]]:
    """Close what earlier drivers cannot hand on; return (finished, to continue, configs to rerun).

    Finished trials count against the budget. Interrupted (RUNNING) trials continue under their own
    numbers, from their last checkpoint or, if they reported nothing yet, from epoch 1. One that
    reported epochs but whose checkpoint is gone is closed as FAIL (RERUN_ATTR) and its config is
    queued in the study at once (a WAITING trial, the next one Optuna hands out), so a driver that
    dies before the rerun starts leaves it queued for the next; the configs are returned too. The
    paper-defaults tag moves to the rerun (the closed trial's is set to False): one trial carries it.
    Interrupted trials beyond the budget (--trials lowered) fail.
    """
    past = study.get_trials(deepcopy=False)
    finished = [t for t in past if t.state.is_finished() and RERUN_ATTR not in t.user_attrs]
    interrupted = [t for t in past if t.state == TrialState.RUNNING]
    budget = max(trials - len(finished), 0)
    for t in interrupted[budget:]:
        study.tell(t.number, state=TrialState.FAIL)
    resumed, rerun = [], []
    for t in interrupted[:budget]:
        if t.intermediate_values and last_checkpoint(t) is None:
            closed = reopen_trial(study, t)
            closed.set_user_attr(RERUN_ATTR, "its checkpoint was gone on resume")
            tag = {PAPER_DEFAULTS_ATTR: True} if t.user_attrs.get(PAPER_DEFAULTS_ATTR) else None
            if tag:
                closed.set_user_attr(PAPER_DEFAULTS_ATTR, False)
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs=tag)
            rerun.append(t.params)
        else:
            resumed.append(t)
    return finished, resumed, rerun


@dataclass(frozen=True)
class LossSearch:
    """One loss's share of a search: its space and the points it tries first (the paper's defaults)."""

    loss: str
    space: Callable[[optuna.Trial], Any]
    first_points: list[dict[str, Any]]


@dataclass
class _Study:
    """One loss's study as this driver found it, after settle_earlier_drivers."""

    search: LossSearch
    study: optuna.Study
    fresh: bool  # no earlier driver ran it: its first points are still to try
    finished: list[FrozenTrial]
    resumed: list[FrozenTrial]
    rerun: list[dict[str, Any]]


def run_search(run_dir: Path, setup: TrialSetup, space: Callable[[optuna.Trial], Any],
               first_points: list[dict[str, float]], settings: SearchSettings,
               echo: Callable[[str], None] = print, callbacks: Sequence[tune.Callback] = (),
               trial: Callable[[dict[str, Any], Any], None] = run_trial) -> None:
    """Run the study up to its budget: TPE proposals, ASHA stopping, trials in parallel under Ray Tune.

    The study is recorded in `run_dir/study.journal` as results arrive and copied to `run_dir/study.db`
    (optuna-dashboard reads it) when the search ends (trainables/study.py); Ray's experiment in
    `run_dir/ray` unless `settings.storage_path` points at storage every node reaches. On a study
    an earlier driver left unfinished, finished trials stay as they are (TPE learns from them
    and ASHA's rungs are refilled from their curves), interrupted ones continue from their last
    checkpoint, and only the rest of the budget is proposed anew. `trial(config, setup)` runs one
    trial: run_trial, or bench/scale.py's simulated one, which drives this same search at scale.

    A fresh study runs `first_points` first, in order; the first is the paper's defaults and its
    trial carries the user attribute PAPER_DEFAULTS_ATTR, which the report compares the search with.
    """
    if setup.loss is None:
        raise ValueError("run_search searches one loss, but the TrialSetup names none; give it the loss, "
                         "or call run_tournament.")
    _run(run_dir, setup, [LossSearch(setup.loss, space, first_points)], False, settings, echo, callbacks, trial)


def run_tournament(run_dir: Path, setup: TrialSetup, searches: Sequence[LossSearch], settings: SearchSettings,
                   echo: Callable[[str], None] = print, callbacks: Sequence[tune.Callback] = ()) -> None:
    """run_search for several losses at once, each with its own study (study_name(loss, True)) and
    `settings.trials` trials, under one Tuner: TournamentSearch takes the losses' proposals in turn,
    PerLossASHA stops a trial only against its own loss's trials, and warm actors serve every loss."""
    if len({s.loss for s in searches}) != len(searches):
        raise ValueError(f"A tournament searches each loss once, but got {[s.loss for s in searches]}.")
    _run(run_dir, setup, list(searches), True, settings, echo, callbacks, run_trial)


def _run(run_dir: Path, setup: TrialSetup, searches: list[LossSearch], tournament: bool, settings: SearchSettings,
         echo: Callable[[str], None], callbacks: Sequence[tune.Callback],
         trial: Callable[[dict[str, Any], Any], None]) -> None:
    """The search, its studies recorded in study.journal while it runs and copied to study.db after."""
    # Refused before the study or Ray is touched: ASHA's own check is an assert deep in Tune's start-up.
    schedulers = {s.loss: ResumableASHA(max_t=settings.max_epochs, grace_period=settings.grace_period,
                                        reduction_factor=settings.reduction_factor) for s in searches}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = open_journal(run_dir)
    try:
        _search(run_dir, journal, schedulers, setup, searches, tournament, settings, echo, callbacks, trial)
    finally:
        journal.close()
    write_dashboard_copy(run_dir)


def _retire_when_recorded(journal: WriteBehindJournal, location: str) -> None:
    """Delete a superseded checkpoint once the journal's record of its successor is on disk."""
    journal.when_durable(functools.partial(delete_checkpoint, location))


def _open(storage: optuna.storages.BaseStorage, search: LossSearch, tournament: bool, trials: int) -> _Study:
    study = optuna.create_study(storage=storage, study_name=study_name(search.loss, tournament),
                                load_if_exists=True, direction="maximize" if SELECTION_MODE == "max" else "minimize")
    fresh = not study.get_trials(deepcopy=False)
    return _Study(search, study, fresh, *settle_earlier_drivers(study, trials))


def _search(run_dir: Path, journal: WriteBehindJournal, schedulers: dict[str, ResumableASHA], setup: TrialSetup,
            searches: list[LossSearch], tournament: bool, settings: SearchSettings, echo: Callable[[str], None],
            callbacks: Sequence[tune.Callback], trial: Callable[[dict[str, Any], Any], None]) -> None:
    storage = JournalStorage(journal)
    studies = [_open(storage, s, tournament, settings.trials) for s in searches]
    budgets = {s.search.loss: settings.trials - len(s.finished) for s in studies}
    budget = sum(max(b, 0) for b in budgets.values())
    if budget <= 0:  # an earlier driver finished the search (and may have died before its copy)
        return
    init_ray(settings.address, dashboard=settings.dashboard)
    if setup.data is not None:  # into the object store once, checked to fit, before any trial
        setup = replace(setup, data=share(setup.data))
    if not all(s.fresh for s in studies):
        resumed, rerun = sum(len(s.resumed) for s in studies), sum(len(s.rerun) for s in studies)
        done = [loss for loss, b in budgets.items() if b <= 0]
        echo(f"resume: {sum(len(s.finished) for s in studies)} finished trials kept, {resumed} interrupted trials "
             "continue, " + (f"{rerun} whose checkpoint is gone run again as new trials, " if rerun else "")
             + f"{budget - resumed - rerun} new" + (f"; losses already finished: {', '.join(done)}" if done else ""))
    storage_path, name = experiment_location(run_dir, settings.storage_path)
    if settings.storage_path is None and sum(node["Alive"] for node in ray.nodes()) > 1:
        echo(f"warning: this Ray cluster has several nodes but no --storage-path: trials on nodes that do not "
             f"mount {storage_path} will fail to write checkpoints. Give a directory every node mounts or an "
             "s3:// / gs:// URI.")
    searchers = {}
    for s in studies:
        loss = s.search.loss
        for t in s.finished:
            schedulers[loss].replay(f"study-{t.number}", t.intermediate_values)
        if s.fresh:  # queued in study.db, where the tag goes with the point (OptunaSearch's own queue takes none)
            for i, point in enumerate(s.search.first_points):
                s.study.enqueue_trial(point, user_attrs={PAPER_DEFAULTS_ATTR: True} if i == 0 else None)
        searchers[loss] = PruningAwareOptunaSearch(
            space=s.search.space, metric=SELECTION_METRIC, mode=SELECTION_MODE,
            sampler=tpe_sampler(settings.trials, settings.seed + len(s.finished)), study_name=s.study.study_name,
            storage=storage, max_t=settings.max_epochs, checkpoint_root=f"{storage_path}/{name}",
            resume=s.resumed, on_resume=schedulers[loss].replay,
            retire=functools.partial(_retire_when_recorded, journal))
    # What "best so far" counts from earlier drivers, per loss in a tournament.
    selectable = {s.search.loss: [t.intermediate_values for t in s.finished if t.state in (
        TrialState.COMPLETE, TrialState.PRUNED) and DIVERGED not in t.user_attrs] for s in studies}
    resumed = {(s.search.loss, t.number) if tournament else t.number: t.intermediate_values
               for s in studies for t in s.resumed}
    progress = ProgressLines(budget, settings.max_epochs, echo, resumed=resumed,
                             earlier=selectable if tournament else next(iter(selectable.values())))
    if tournament:
        searcher, scheduler = TournamentSearch(searchers, budgets), PerLossASHA(schedulers)
    else:
        (searcher,), (scheduler,) = searchers.values(), schedulers.values()
    slots = functools.partial(trial_slots, settings.cpus_per_trial, settings.gpus_per_trial)
    trainable = tune.with_resources(tune.with_parameters(trial, setup=setup),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=SlotLimiter(searcher, slots), scheduler=scheduler,
                                    num_samples=budget, reuse_actors=True, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=0,
            # Tune's own loggers would write CSV and TensorBoard files for every result on the
            # driver; result.json (one line per result) is kept for post-mortems.
            callbacks=[progress, JsonLoggerCallback(), *callbacks],
            # The searcher deletes superseded checkpoints (keeping one per trial): Tune's num_to_keep
            # would save its whole experiment state at every checkpoint, a cost per result that grows
            # with the study.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=1)),
    )
    # With a searcher Tune keeps one trial pending at a time, so the first wave's trials would start
    # one actor start-up (seconds: imports, data) after another. SlotLimiter is the gate instead: as
    # many trials pending as there are free slots, every slot's trial starting at once.
    # Tune saves its whole experiment state (every trial) at least every 10 s, 5 % of the driver's
    # time and a cost per result that grows with the study (bench/RESULTS.md, "Cluster scale"); a
    # resume reads study.journal, not that state, so it is saved every 10 minutes and at the end.
    tune_env = {PENDING_ENV: str(budget), SNAPSHOT_ENV: str(SNAPSHOT_SECONDS)}
    ours = [name for name in tune_env if name not in os.environ]  # a user's value wins
    os.environ.update({name: tune_env[name] for name in ours})
    if settings.address is not None:  # an autoscaler grows the cluster for the trials that will run at once
        request_slots(budget, settings.cpus_per_trial, settings.gpus_per_trial)
    try:
        tuner.fit()
    finally:
        for name in ours:
            del os.environ[name]
        if settings.address is not None:
            request_slots(0, settings.cpus_per_trial, settings.gpus_per_trial)
