"""Keep every trial slot busy without proposing trials ahead of the slots or wasting actor start-ups.

Two Tune behaviours cost a large search its slots (measured in bench/RESULTS.md, "Cluster scale"):

- With pending trials allowed ahead of the slots, TPE proposes configs long before they can run
  (twice the slots in flight for constant liar) and every pending trial gets an actor scheduled.
- With actor reuse, a freed actor goes to the oldest pending trial (FIFO). If that trial's own
  actor is still starting, Tune discards the starting actor: its process start-up (Ray worker,
  imports, data) is thrown away, and when trials end faster than actors start (a slow-starting
  trial and an ASHA rung after one short epoch) the slots never fill.

So a search proposes a trial only while fewer trials are live than the cluster has slots
(SlotLimiter), a freed actor goes to the trial proposed for its slot, which has no actor yet
(FreshTrialFirst), and on a cluster the autoscaler is asked up front for the search's slots
(request_slots), since no trial waits for resources to ask for them.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ray.autoscaler.sdk import request_resources
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter, Searcher


class SlotLimiter(ConcurrencyLimiter):
    """At most one live trial per slot the cluster has now (rechecked every `refresh_s`, as nodes join).

    A trial is proposed when a slot frees, with every running trial known to constant-liar TPE, and
    not a whole trial's length before it can start.
    """

    def __init__(self, searcher: Searcher, slots: Callable[[], int], refresh_s: float = 5.0) -> None:
        super().__init__(searcher, max_concurrent=max(1, slots()))
        self._slots = slots
        self._refresh_s = refresh_s
        self._checked = time.monotonic()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if time.monotonic() - self._checked >= self._refresh_s:
            self.set_max_concurrency(max(1, self._slots()))
            self._checked = time.monotonic()
        return super().suggest(trial_id)


UNFINISHED = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)  # a trial retried after a failure goes back to PENDING


class FreshTrialFirst:
    """Which pending trial Tune places next: the oldest one that has no actor yet, else none.

    Tune gives every pending trial an actor (a cached one, or a new one starting) in the step that
    asks this, so a trial pending at the previous call has one. A fresh trial is one proposed
    since: handed a freed actor, it starts at once and no starting actor is discarded. Oldest
    first keeps the first wave's actors requested in proposal order (a run is reproducible from its
    seed). With no fresh trial the oldest PAUSED one; None leaves the choice to Tune.
    """

    def __init__(self) -> None:
        self._pending_before: set[str] = set()
        self._live: list[Trial] = []  # trials not finished at the last call, in the order Tune added them
        self._seen = 0  # how many of Tune's trials (an append-only list) were looked at

    def choose(self, trials: Sequence[Trial]) -> Trial | None:
        # Called at every step of Tune's loop: look at the unfinished trials only, not the whole study.
        self._live = [t for t in (*self._live, *trials[self._seen:]) if t.status in UNFINISHED]
        self._seen = len(trials)
        pending = [t for t in self._live if t.status == Trial.PENDING]
        fresh = [t for t in pending if t.trial_id not in self._pending_before]
        self._pending_before = {t.trial_id for t in pending}
        if fresh:
            return fresh[0]
        return next((t for t in self._live if t.status == Trial.PAUSED), None)


def request_slots(trials: int, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Ask the cluster's autoscaler (if any) for room to run `trials` trials at once; empty: release.

    Without this an autoscaling cluster would never grow: SlotLimiter leaves no trial waiting for
    resources, which is what the autoscaler scales on. Where no autoscaler runs it is a no-op.
    """
    bundle = {"CPU": cpus_per_trial, **({"GPU": gpus_per_trial} if gpus_per_trial else {})}
    request_resources(bundles=[bundle] * trials)
