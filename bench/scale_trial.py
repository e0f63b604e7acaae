"""A simulated trial for bench/scale.py and the scale test: it sleeps through its epochs and reports
a score from a synthetic response surface over softtriple's search space, with a checkpoint per epoch.

It imports neither torch nor the data (nor trainables.trial, which does), so a Ray worker that
runs it costs only Ray's and Tune's own start-up: the driver's side is what is measured.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from trainables.config import SELECTION_METRIC
from trainables.study import EPOCH, RESUME_KEY

STATE_FILE = "epoch.json"

# The surface's optimum (a point inside softtriple's space) and each parameter's width, on the
# scale TPE searches it (log10 for the log-scaled ones).
OPTIMUM = {"lr": math.log10(3e-4), "weight_decay": -4.0, "proxy_lr": math.log10(3e-2), "margin": 0.4,
           "scale": 60.0, "gamma": -1.5, "tau": 0.4}
WIDTH = {"lr": 0.5, "weight_decay": 1.5, "proxy_lr": 1.0, "margin": 0.3, "scale": 35.0, "gamma": 0.5, "tau": 0.4}
LOGGED = {"lr", "weight_decay", "proxy_lr", "gamma"}


@dataclass(frozen=True)
class SimSetup:
    """How simulated epochs last and score: mean seconds (already scaled), spread, budget, noise."""

    epoch_seconds: float
    max_t: int
    spread: float = 0.3  # sigma of the log-normal epoch time
    noise: float = 0.005  # sd of the score's per-epoch noise
    seed: int = 0
    loss: str = "softtriple"  # whose space the surface is over; run_search reads a setup's loss
    data: None = None  # simulated trials read no data (run_search ships a setup's data to the store)


def plateau(params: dict[str, float]) -> float:
    """Where a config's curve levels off: 0.3 far from the optimum, 0.7 at it."""
    z = sum(((math.log10(params[k]) if k in LOGGED else params[k]) - OPTIMUM[k]) ** 2 / WIDTH[k] ** 2
            for k in OPTIMUM)
    return 0.3 + 0.4 * math.exp(-z / 2)


def true_score(params: dict[str, float], epoch: int) -> float:
    """The noise-free score after `epoch` epochs: a higher lr learns faster (so early rungs mislead a little)."""
    rate = 0.15 + 0.5 * min(max((math.log10(params["lr"]) + 4) / 2, 0.0), 1.0)
    return plateau(params) * (1 - math.exp(-rate * epoch))


def epoch_length(setup: SimSetup, rng: np.random.Generator) -> float:
    """One simulated epoch's seconds: log-normal with mean `setup.epoch_seconds`."""
    return setup.epoch_seconds * rng.lognormal(-setup.spread ** 2 / 2, setup.spread)


def sim_trial(config: dict[str, Any], setup: SimSetup) -> None:
    """Sleep through each epoch, report its score and a one-file checkpoint; continue from a checkpoint."""
    params = {k: v for k, v in config.items() if k != RESUME_KEY}
    resume = config.get(RESUME_KEY, {})
    checkpoint = tune.get_checkpoint() or (tune.Checkpoint(resume["checkpoint"]) if "checkpoint" in resume else None)
    done = 0
    if checkpoint:
        with checkpoint.as_directory() as d:
            done = json.loads((Path(d) / STATE_FILE).read_text())[EPOCH]
    key = zlib.crc32(json.dumps(params, sort_keys=True).encode())  # hash() of str differs between processes
    rng = np.random.default_rng([setup.seed, key, done])
    for epoch in range(done + 1, setup.max_t + 1):
        seconds = epoch_length(setup, rng)
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        score = true_score(params, epoch) + setup.noise * rng.standard_normal()
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / STATE_FILE).write_text(json.dumps({EPOCH: epoch}))
            tune.report({SELECTION_METRIC: score, EPOCH: epoch, "busy_start": start, "busy_end": end,
                         "pid": os.getpid(), "torch_loaded": "torch" in sys.modules},
                        checkpoint=tune.Checkpoint.from_directory(d))
