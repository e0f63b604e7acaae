"""Slot keeping (trainables/slots.py): no trial proposed ahead of a slot, a freed actor to the trial
proposed for its slot, the autoscaler asked for the search's slots. The search-level check (a 32-slot
simulated run never holds more than 32 unfinished trials) is in tests/test_scale.py."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from trainables import slots as slots_module
from trainables.slots import FreshTrialFirst, SlotLimiter, request_slots


class Counting(Searcher):
    """Proposes {"n": i} for the i-th suggestion and remembers which trials it was told ended."""

    def __init__(self) -> None:
        super().__init__(metric="score", mode="max")
        self.suggested: list[str] = []
        self.completed: list[str] = []

    def suggest(self, trial_id: str) -> dict[str, Any]:
        self.suggested.append(trial_id)
        return {"n": len(self.suggested)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.completed.append(trial_id)


def test_the_limiter_proposes_only_while_a_slot_is_free() -> None:
    inner = Counting()
    limiter = SlotLimiter(inner, slots=lambda: 2)
    assert [limiter.suggest(t) for t in ("a", "b", "c")] == [{"n": 1}, {"n": 2}, None]
    assert inner.suggested == ["a", "b"]  # the searcher is not asked while the slots are full
    limiter.on_trial_complete("a", {"score": 1.0})
    assert inner.completed == ["a"]
    assert limiter.suggest("c") == {"n": 3}
    assert limiter.suggest("d") is None


def test_the_limiter_follows_the_cluster_as_slots_are_added() -> None:
    cluster = {"slots": 1}
    limiter = SlotLimiter(Counting(), slots=lambda: cluster["slots"], refresh_s=0.0)
    assert limiter.suggest("a") is not None and limiter.suggest("b") is None
    cluster["slots"] = 3  # an autoscaler added a node
    assert limiter.suggest("b") is not None and limiter.suggest("c") is not None
    assert limiter.suggest("d") is None
    cluster["slots"] = 0  # a cluster with no slot left still runs one trial at a time
    limiter.on_trial_complete("a")
    limiter.on_trial_complete("b")
    limiter.on_trial_complete("c")
    assert limiter.suggest("d") is not None and limiter.suggest("e") is None


def fake(*statuses: str) -> list[Any]:
    return [SimpleNamespace(trial_id=str(i), status=s) for i, s in enumerate(statuses)]


def test_the_first_wave_is_placed_in_proposal_order() -> None:
    """Every trial fresh: the oldest first, so actors are requested in the order TPE proposed."""
    assert FreshTrialFirst().choose(fake(Trial.PENDING, Trial.PENDING, Trial.PENDING)).trial_id == "0"


def test_a_freed_actor_goes_to_the_trial_proposed_since_not_to_one_whose_actor_is_starting() -> None:
    placement = FreshTrialFirst()
    trials = fake(Trial.RUNNING, Trial.PENDING, Trial.PENDING)  # 1 and 2: their actors starting
    assert placement.choose(trials).trial_id == "1"
    # Trial 0 ended and trial 3 was proposed for its slot: 3 takes the freed actor, 1 and 2 keep theirs.
    trials[0].status = Trial.TERMINATED
    trials += fake(*[Trial.PENDING] * 4)[3:]
    assert placement.choose(trials).trial_id == "3"
    assert placement.choose(trials) is None  # nothing fresh: Tune's own choice stands


def test_a_trial_back_to_pending_after_a_failure_is_fresh_and_paused_ones_come_after_pending() -> None:
    placement = FreshTrialFirst()
    trials = fake(Trial.RUNNING, Trial.PAUSED)
    assert placement.choose(trials).trial_id == "1"
    trials[0].status = Trial.PENDING  # 0 failed and is retried
    assert placement.choose(trials).trial_id == "0"
    trials[0].status, trials[1].status = Trial.TERMINATED, Trial.RUNNING
    trials += fake(Trial.ERROR, Trial.ERROR, Trial.TERMINATED)[2:]
    assert placement.choose(trials) is None


def test_the_autoscaler_is_asked_for_one_bundle_per_trial_and_released(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[dict[str, float]]] = []
    monkeypatch.setattr(slots_module, "request_resources", lambda bundles: asked.append(bundles))
    request_slots(3, cpus_per_trial=2, gpus_per_trial=0.25)
    request_slots(2, cpus_per_trial=1, gpus_per_trial=0)
    request_slots(0, cpus_per_trial=1, gpus_per_trial=0.25)
    assert asked == [[{"CPU": 2, "GPU": 0.25}] * 3, [{"CPU": 1}] * 2, []]


def test_both_schedulers_place_the_fresh_trial_first() -> None:
    from trainables.searcher import ResumableASHA
    from trainables.tournament import PerLossASHA

    for make in (lambda asha: asha, lambda asha: PerLossASHA({"softtriple": asha})):
        scheduler = make(ResumableASHA(max_t=4, grace_period=1, reduction_factor=2))
        trials = fake(Trial.PENDING, Trial.PENDING)
        controller = SimpleNamespace(get_trials=lambda: trials)
        assert scheduler.choose_trial_to_run(controller).trial_id == "0"
        trials[0].status = Trial.TERMINATED
        trials.append(SimpleNamespace(trial_id="2", status=Trial.PENDING))
        assert scheduler.choose_trial_to_run(controller).trial_id == "2"
