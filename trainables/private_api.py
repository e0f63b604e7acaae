"""Every reach into Ray's and Optuna's private internals, each behind one named function.

The resumable search needs a few things neither library offers publicly. Keeping each here, with
what it touches and why, makes a new release a one-file review: tests/test_private_api.py runs
every function against the installed Ray and Optuna and names the function and the version that
broke, and pyproject.toml caps both libraries at the releases that test passed on.
"""
from __future__ import annotations

import os
from collections.abc import Container, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from ray._private.services import canonicalize_bootstrap_address_or_die
from ray.train.constants import CHECKPOINT_DIR_NAME

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, TrialState
    from ray.tune.search.optuna import OptunaSearch


def searcher_study(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study Ray's OptunaSearch asks and tells (`_ot_study`).

    OptunaSearch builds it from its storage and name and exposes no accessor; telling Optuna a
    PRUNED state, which OptunaSearch never does, needs this very study object.
    """
    return searcher._ot_study


def searcher_trial(searcher: OptunaSearch, trial_id: str) -> optuna.Trial:
    """The Optuna trial OptunaSearch opened for Ray trial `trial_id` (`_ot_trials`).

    Reporting each epoch and writing user attributes goes to the trial OptunaSearch.suggest asked
    for; it keeps the Ray-id -> Optuna-trial map private.
    """
    return searcher._ot_trials[trial_id]


def adopt_trial(searcher: OptunaSearch, trial_id: str, trial: optuna.Trial) -> None:
    """Make `trial` the Optuna trial of Ray trial `trial_id` (writes `_ot_trials`).

    A study trial an earlier driver left RUNNING continues under a new Ray trial; OptunaSearch has
    no call that hands it an existing Optuna trial instead of asking for a new one.
    """
    searcher._ot_trials[trial_id] = trial


def reopen_trial(study: optuna.Study, trial: FrozenTrial) -> optuna.Trial:
    """A live handle on a trial already in the study (`optuna.Trial(study, frozen._trial_id)`).

    Optuna has no public call that reopens a RUNNING trial: Study.ask builds the handle this way
    for the WAITING trials it pops, from the storage id that FrozenTrial keeps private.
    """
    return optuna.Trial(study, trial._trial_id)


def reported_checkpoint_dir(result: Mapping[str, Any]) -> str | None:
    """The directory name, inside the trial's directory, of the checkpoint a result came with.

    Tune autofills it into each result under `ray.train.constants.CHECKPOINT_DIR_NAME`, a module
    outside Ray's public API; the worker has already uploaded the checkpoint when the driver sees it.
    """
    return result.get(CHECKPOINT_DIR_NAME)


def auto_address() -> str:
    """The address `--address auto` resolves to (RAY_ADDRESS, else the cluster `ray start` recorded here).

    Ray's own lookup is `ray._private.services.canonicalize_bootstrap_address_or_die`; ray.init
    does it too, but only while connecting, which retries for minutes where nothing answers.
    Raises ConnectionError when no cluster is found.
    """
    return canonicalize_bootstrap_address_or_die("auto")


# Ray's internal config flag (RayConfig, compiled into the raylet), read from RAY_<flag> at start-up.
PRESTART_FLAG = "prestart_worker_first_driver"


def skip_worker_prestart() -> None:
    """Ask the local Ray about to start not to prestart idle workers for its first driver (a user's value wins).

    Ray prestarts one worker per CPU, but no trial lands on them: Tune gives its trainables a
    runtime env, which only new workers match. Starting them costs 0.7-1 s of a 2-core machine's
    ray.init, and they are killed unused. Only this internal flag turns them off: ray.init takes
    it only through its private `_system_config`.
    """
    os.environ.setdefault(f"RAY_{PRESTART_FLAG}", "0")


class _TrialsView:
    """A study whose trial list, as a sampler reads it, is `trials`; all else is the study's."""

    def __init__(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> None:
        self._study, self._trials = study, trials

    def _get_trials(self, deepcopy: bool = False, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def trials_view(study: optuna.Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """`study` as TPE sees it when it models only `trials` (trainables/sampler.py's bounded window).

    Optuna's TPESampler reads a study's trials through the private `Study._get_trials` and offers
    no public way to choose which trials it models; the view answers that call from `trials` and
    passes everything else (directions, storage for constant liar's notes) to the study.
    """
    return _TrialsView(study, trials)  # type: ignore[return-value]  # a Study to TPE, not an instance of one
