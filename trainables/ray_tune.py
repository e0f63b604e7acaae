"""The Ray Tune side: the trial function, a pruning-aware Optuna searcher, resumable ASHA, the Tuner.

With trainables/ray_cluster.py (starting or joining Ray, placing work) the only code that imports
Ray. A trial is a thin loop over the shared Trainer:
train one epoch (one model per validation fold), score the validation classes, checkpoint,
`tune.report` (Ray's own examples' shape). Optuna proposes the configs (TPE, define-by-run
space), ASHA stops weak trials at its rungs, and each stopped trial is told to Optuna as PRUNED
(DESIGN §6).

study.db is the record a restarted driver trusts (Ray's `Tuner.restore` brings back neither the
searcher's view of trials finished after its last snapshot nor ASHA's rungs): every epoch's
score and the path of that epoch's checkpoint go into the Optuna trial as they arrive, so
`run_search` on an existing study keeps every finished trial, continues each interrupted one
from its last checkpoint under its own trial number, and refills ASHA's rungs from the curves.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pyarrow.fs
import ray
import torch
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.train.constants import CHECKPOINT_DIR_NAME
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from trainables.config import (DIVERGED, RAY_TRIAL_ID_ATTR, RERUN_ATTR, SECONDS_ATTR, SELECTION_METRIC,
                                SELECTION_MODE, STUDY_NAME, TrainConfig, study_url)
from trainables.data import build_dataset
from trainables.data.base import DMLDataset
from trainables.data.splits import ClassSplit
from trainables.ray_cluster import assigned_device, init_ray, is_uri, trial_slots
from trainables.trainer import DivergedError, Trainer

logger = logging.getLogger(__name__)

# The progress attribute ASHA and Optuna count in: the trainer's epoch. A trial continued from a
# checkpoint in a new Ray trial keeps its epoch, while Ray's training_iteration starts again at 1.
EPOCH = "epoch"
# Optuna user attribute: where the trial's latest checkpoint is (a local path or a storage URI).
CHECKPOINT_ATTR = "checkpoint"
# Config key of a Ray trial that continues an interrupted study trial: {"trial": number[, "checkpoint": uri]}.
RESUME_KEY = "resume"
EXPERIMENT_DIR = "ray"
FOLD_METRIC = SELECTION_METRIC.removeprefix("val_")  # the selection metric as Trainer.evaluate names it
PENDING_ENV = "TUNE_MAX_PENDING_TRIALS_PG"  # Tune's limit on trials waiting for an actor (a user's value wins)


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its config; shipped once to workers via tune.with_parameters."""

    loss: str
    dataset: str
    data_root: str | None
    image_size: int
    # One split (fixed protocol) or the k-fold splits the search uses: a trial trains one model per
    # split and is scored by the mean over them.
    folds: tuple[ClassSplit, ...]
    ks: tuple[int, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields that are not searched
    threads: int = 1


def fold_checkpoint(fold: int) -> str:
    return f"fold-{fold}.pt"


@functools.lru_cache(maxsize=1)
def worker_dataset(name: str, root: str | None, image_size: int) -> DMLDataset:
    """The data set, loaded once per worker process: with reuse_actors one worker runs trial after trial."""
    return build_dataset(name, root, image_size)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Train one model per fold; after every epoch checkpoint them all and report the fold-mean Recall@K."""
    resume = config.get(RESUME_KEY, {})
    params = {k: v for k, v in config.items() if k != RESUME_KEY}
    torch.set_num_threads(setup.threads)
    gpu_ids, device = assigned_device()
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": gpu_ids, "device": device}
    dataset = worker_dataset(setup.dataset, setup.data_root, setup.image_size)
    cfg = TrainConfig.from_params(setup.loss, params, **setup.fixed)
    trainers = [Trainer(cfg, dataset.subset(fold.fit, train=True), device=device) for fold in setup.folds]
    val_sets = [dataset.subset(fold.val) for fold in setup.folds]
    # Ray's own checkpoint (a retry after a worker died) is newer than the one an interrupted study left.
    checkpoint = tune.get_checkpoint() or (tune.Checkpoint(resume["checkpoint"]) if "checkpoint" in resume else None)
    if checkpoint:
        with checkpoint.as_directory() as d:
            for i, trainer in enumerate(trainers):
                trainer.load(Path(d) / fold_checkpoint(i))
    while (epoch := trainers[0].epoch + 1) <= cfg.epochs:
        start = time.perf_counter()
        try:
            losses = [trainer.train_epoch() for trainer in trainers]
        except DivergedError as err:
            # A diverging config is a bad point of the space, not a crash: report the worst score
            # so ASHA and TPE learn from it, and end the trial with the reason.
            tune.report({SELECTION_METRIC: 0.0, DIVERGED: str(err), EPOCH: epoch,
                         "train_seconds": time.perf_counter() - start, "eval_seconds": 0.0, **placement})
            return
        trained = time.perf_counter()
        per_fold = [trainer.evaluate(val, setup.ks) for trainer, val in zip(trainers, val_sets)]
        metrics = {f"val_{k}": float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}
        evaluated = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            for i, trainer in enumerate(trainers):
                trainer.save(Path(d) / fold_checkpoint(i))
            tune.report({
                **metrics, f"{SELECTION_METRIC}_folds": [m[FOLD_METRIC] for m in per_fold],
                "train_loss": float(np.mean(losses)), EPOCH: epoch,
                "train_seconds": trained - start, "eval_seconds": evaluated - trained, **placement,
            }, checkpoint=tune.Checkpoint.from_directory(d))


def last_checkpoint(trial: FrozenTrial) -> str | None:
    """Where an interrupted study trial's latest checkpoint is, if it still exists."""
    location = trial.user_attrs.get(CHECKPOINT_ATTR)
    if not location:
        return None
    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        logger.warning("Checkpoint %s of study trial %d is gone.", location, trial.number)
        return None
    return location


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna an ASHA-stopped trial is PRUNED, and keeps study.db resumable.

    Ray's OptunaSearch tells every trial that ends without error as COMPLETE with its last
    value, so a config stopped after one epoch looks like a finished one with a low score and
    TPE's model of "good" is built from mixed budgets. Optuna records a PRUNED trial's last
    intermediate value (already reported each epoch) and TPE ranks pruned trials by the step
    they reached. A trial that ran the full budget is told its best epoch's value, the number
    selection ranks it by, not its last. Each Optuna trial also records its Ray trial id (linking
    study.db to ray/), the location of its latest checkpoint, and why it diverged if it did.

    `resume` are study trials an earlier driver left RUNNING: the first suggestions hand them out
    again (same trial number, same params, RESUME_KEY naming the checkpoint to continue from, if
    any), and `on_resume(ray_trial_id, curve)` lets the scheduler learn what they already reported.
    """

    def __init__(self, *args: Any, max_t: int, checkpoint_root: str, resume: Sequence[FrozenTrial] = (),
                 on_resume: Callable[[str, Mapping[int, float]], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_t = max_t
        self.checkpoint_root = checkpoint_root.rstrip("/")  # Ray's experiment directory (path or URI)
        self._resume = list(resume)
        self._on_resume = on_resume
        self._last_step: dict[str, int] = {}  # Ray trial id -> last epoch reported to Optuna
        self._best: dict[str, float] = {}  # Ray trial id -> best value reported to Optuna
        self._earlier_seconds: dict[str, float] = {}  # Ray trial id -> seconds earlier drivers ran its study trial

    def suggest(self, trial_id: str) -> dict | None:
        if self._resume:
            past = self._resume.pop(0)
            # Optuna has no public call that reopens a RUNNING trial; Study.ask reopens WAITING ones this way.
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, past._trial_id)
            checkpoint = last_checkpoint(past)
            config = dict(past.params) | {RESUME_KEY: {"trial": past.number} | ({"checkpoint": checkpoint}
                                                                                 if checkpoint else {})}
            for step, value in past.intermediate_values.items():
                self._note(trial_id, value, step)
            self._earlier_seconds[trial_id] = past.user_attrs.get(SECONDS_ATTR, 0.0)
            if self._on_resume and checkpoint:
                self._on_resume(trial_id, past.intermediate_values)
        else:
            config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.report(result[self.metric], result[EPOCH])
        self._note(trial_id, result[self.metric], result[EPOCH])
        self._record_seconds(trial_id, result)
        if result.get(CHECKPOINT_DIR_NAME):  # already on storage: the worker uploads it before reporting
            ot_trial.set_user_attr(CHECKPOINT_ATTR, f"{self.checkpoint_root}/{trial_id}/{result[CHECKPOINT_DIR_NAME]}")

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        result = result or {}
        step, value = result.get(EPOCH, 0), result.get(self.metric)
        ot_trial = self._ot_trials[trial_id]
        if DIVERGED in result:
            ot_trial.set_user_attr(DIVERGED, result[DIVERGED])
        # Ray hands a trial's last result (the one ASHA stopped it on, or its max_t epoch) only to
        # on_trial_complete, never to on_trial_result: record it as the curve's last point too,
        # or a trial stopped at its first rung reaches Optuna with no value at all.
        if value is not None and self._last_step.get(trial_id) != step:
            ot_trial.report(value, step)
            self._note(trial_id, value, step)
        self._record_seconds(trial_id, result)
        if error:  # Ray's OptunaSearch would call an errored trial that had reported COMPLETE
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif value is not None and step >= self.max_t and DIVERGED not in result:
            self._ot_study.tell(ot_trial, self._best[trial_id])
        else:  # stopped by ASHA, diverged (last value 0), or ended before its first result: Optuna keeps the last value
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _record_seconds(self, trial_id: str, result: dict) -> None:
        if "time_total_s" in result:
            seconds = self._earlier_seconds.get(trial_id, 0.0) + result["time_total_s"]
            self._ot_trials[trial_id].set_user_attr(SECONDS_ATTR, seconds)

    def _note(self, trial_id: str, value: float, step: int) -> None:
        self._last_step[trial_id] = step
        best = self._best.get(trial_id)
        self._best[trial_id] = value if best is None else (max if self._mode == "max" else min)(best, value)


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs can be refilled with curves a previous driver saw, so a resumed study stops
    trials against the same cutoffs a single uninterrupted run would have used."""

    def __init__(self, *, max_t: int, grace_period: int, reduction_factor: int) -> None:
        super().__init__(time_attr=EPOCH, metric=SELECTION_METRIC, mode=SELECTION_MODE, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor, brackets=1)

    def replay(self, key: str, curve: Mapping[int, float]) -> None:
        """Record a curve (epoch -> score) under `key` as if its trial had reported it live."""
        past = SimpleNamespace(trial_id=key)  # a bracket only reads the trial's id
        for step in sorted(curve):
            self._brackets[0].on_result(past, step, self._metric_op * curve[step])


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class ProgressLines(tune.Callback):
    """One readable line per trial event, instead of Ray's wide status table.

    A trial's score is its best epoch, as in study.db and the selection, so a finished trial whose
    last epoch fell back shows both, and "best so far" is the best epoch of any trial that may be
    selected (not a diverged or failed one), counting the curves of trials an earlier driver ran.
    """

    def __init__(self, total: int, max_t: int, echo: Callable[[str], None] = print,
                 earlier: Sequence[Mapping[int, float]] = (),
                 resumed: Mapping[int, Mapping[int, float]] | None = None) -> None:
        self.total, self.max_t, self.echo = total, max_t, echo
        self.resumed = resumed or {}  # study trial number -> its curve, for trials that continue from a checkpoint
        self.finished = 0
        self.started: set[str] = set()
        self.peaks: dict[str, tuple[float, int]] = {}  # trial id -> (best value, its epoch)
        self.best: float | None = max((max(c.values()) for c in earlier if c), default=None)

    def _name(self, trial: Trial) -> str:
        return f"trial {trial.trial_id.split('_')[-1]}"

    def _peak(self, trial_id: str, value: float, epoch: int) -> None:
        if trial_id not in self.peaks or value > self.peaks[trial_id][0]:
            self.peaks[trial_id] = (value, epoch)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if trial.trial_id in self.started:  # Tune's retry after its worker died (FailureConfig)
            self.echo(f"{self._name(trial)} restarted on a new worker from its last checkpoint")
            return
        self.started.add(trial.trial_id)
        count = f"[{len(self.started)}/{self.total}]"
        resume = trial.config.get(RESUME_KEY)
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.config.items()) if k != RESUME_KEY)
        if resume is None:
            self.echo(f"{count} {self._name(trial)} started: {params}")
        else:
            where = "its last checkpoint" if "checkpoint" in resume else "epoch 1 (it left no checkpoint)"
            if "checkpoint" in resume:  # the epochs it ran under an earlier driver are part of its curve
                for epoch, value in self.resumed.get(resume["trial"], {}).items():
                    self._peak(trial.trial_id, value, epoch)
            self.echo(f"{count} {self._name(trial)} continues interrupted study trial {resume['trial']} "
                      f"from {where}: {params}")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if result.get(SELECTION_METRIC) is not None and DIVERGED not in result:
            self._peak(trial.trial_id, result[SELECTION_METRIC], result.get(EPOCH, 0))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, None)  # Tune reports a trial that errored to on_trial_error only

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "failed")

    def _finish(self, trial: Trial, outcome: str | None) -> None:
        self.finished += 1
        result = trial.last_result or {}
        value, epochs = result.get(SELECTION_METRIC), result.get(EPOCH, 0)
        if outcome is None:
            outcome = (f"diverged in epoch {epochs}" if DIVERGED in result else
                       "finished" if epochs >= self.max_t else f"pruned at epoch {epochs}")
        shown = "n/a" if value is None else f"{value:.3f}"
        peak = self.peaks.get(trial.trial_id)
        if peak and outcome != "failed" and DIVERGED not in result:
            self.best = peak[0] if self.best is None else max(self.best, peak[0])
            if value is not None and peak[0] > value:
                shown += f", best {peak[0]:.3f} at epoch {peak[1]}"
        best = "n/a" if self.best is None else f"{self.best:.3f}"
        self.echo(f"[{self.finished}/{self.total} done] {self._name(trial)} {outcome}: "
                  f"val R@1 {shown} (best so far {best})")


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


def tpe_sampler(trials: int, seed: int) -> optuna.samplers.TPESampler:
    """TPE whose random start-up phase fits the budget (Optuna's default of 10 would be all of a small study)."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
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


def study_storage(run_dir: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(study_url(run_dir))


def settle_earlier_drivers(study: optuna.Study, trials: int) -> tuple[list[FrozenTrial], list[FrozenTrial],
                                                                       list[dict[str, Any]]]:
    """Close what earlier drivers cannot hand on; return (finished, to continue, configs to rerun).

    Finished trials count against the budget. Interrupted (RUNNING) trials continue under their own
    numbers, from their last checkpoint or, if they reported nothing yet, from epoch 1. One that
    reported epochs but whose checkpoint is gone is closed as FAIL (RERUN_ATTR) and its config is
    queued in the study at once (a WAITING trial, the next one Optuna hands out), so a driver that
    dies before the rerun starts leaves it queued for the next; the configs are returned too.
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
            optuna.Trial(study, t._trial_id).set_user_attr(RERUN_ATTR, "its checkpoint was gone on resume")
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params)
            rerun.append(t.params)
        else:
            resumed.append(t)
    return finished, resumed, rerun


def run_search(run_dir: Path, setup: TrialSetup, space: Callable[[optuna.Trial], Any],
               first_points: list[dict[str, float]], settings: SearchSettings,
               echo: Callable[[str], None] = print, callbacks: Sequence[tune.Callback] = ()) -> None:
    """Run the study up to its budget: TPE proposals, ASHA stopping, trials in parallel under Ray Tune.

    The study lives in `run_dir/study.db` (optuna-dashboard reads it); Ray's experiment in
    `run_dir/ray` unless `settings.storage_path` points at storage every node reaches. On a study
    an earlier driver left unfinished, finished trials stay as they are (TPE learns from them
    and ASHA's rungs are refilled from their curves), interrupted ones continue from their last
    checkpoint, and only the rest of the budget is proposed anew.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage(run_dir)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                direction="maximize" if SELECTION_MODE == "max" else "minimize")
    past = study.get_trials(deepcopy=False)
    finished, resumed, rerun = settle_earlier_drivers(study, settings.trials)
    budget = settings.trials - len(finished)
    if budget <= 0:
        return
    init_ray(settings.address, dashboard=settings.dashboard)
    if past:
        echo(f"resume: {len(finished)} finished trials kept, {len(resumed)} interrupted trials continue, "
             + (f"{len(rerun)} whose checkpoint is gone run again as new trials, " if rerun else "")
             + f"{budget - len(resumed) - len(rerun)} new")
    scheduler = ResumableASHA(max_t=settings.max_epochs, grace_period=settings.grace_period,
                              reduction_factor=settings.reduction_factor)
    for t in finished:
        scheduler.replay(f"study-{t.number}", t.intermediate_values)
    storage_path, name = experiment_location(run_dir, settings.storage_path)
    if settings.storage_path is None and sum(node["Alive"] for node in ray.nodes()) > 1:
        echo(f"warning: this Ray cluster has several nodes but no --storage-path: trials on nodes that do not "
             f"mount {storage_path} will fail to write checkpoints. Give a directory every node mounts or an "
             "s3:// / gs:// URI.")
    selectable = [t.intermediate_values for t in finished  # what "best so far" counts from earlier drivers
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and DIVERGED not in t.user_attrs]
    progress = ProgressLines(budget, settings.max_epochs, echo, earlier=selectable,
                             resumed={t.number: t.intermediate_values for t in resumed})

    searcher = PruningAwareOptunaSearch(
        space=space, metric=SELECTION_METRIC, mode=SELECTION_MODE, points_to_evaluate=None if past else first_points,
        sampler=tpe_sampler(settings.trials, settings.seed + len(finished)), study_name=STUDY_NAME,
        storage=storage, max_t=settings.max_epochs, checkpoint_root=f"{storage_path}/{name}", resume=resumed,
        on_resume=scheduler.replay)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=budget,
                                    reuse_actors=True, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=0,
            callbacks=[progress, *callbacks],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=1)),
    )
    # With a searcher Tune keeps one trial pending at a time, so the trials of the first wave start
    # one actor start-up (seconds: imports, data) after another. Constant-liar TPE proposes well
    # for trials still pending, so let every slot's trial start at once.
    ours = PENDING_ENV not in os.environ  # a user's value wins
    os.environ.setdefault(PENDING_ENV, str(trial_slots(settings.cpus_per_trial, settings.gpus_per_trial)))
    try:
        tuner.fit()
    finally:
        if ours:
            del os.environ[PENDING_ENV]


