"""Small real searches for the Ray tests: a subset of the glyph classes at 16 px, so an epoch takes
well under a second and a test pays mostly for Ray's actor start-up."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ray import tune

from spaces import OptimiserDefaults, default_config, define_by_run
from trainables.data import build_dataset
from trainables.data.splits import ClassSplit, fixed_split, kfold_splits
from trainables.trial import TrialSetup

LOSS = "proxy_anchor"
IMAGE_SIZE = 16
DEFAULTS = OptimiserDefaults(lr=1e-3)


def glyph_folds(n_classes: int = 32, folds: int = 1, seed: int = 0) -> list[ClassSplit]:
    """A fixed split (folds=1) or k folds of the first `n_classes` glyph training classes."""
    classes = build_dataset("glyphs", None, IMAGE_SIZE).train_classes[:n_classes]
    return [fixed_split(classes, 0.25, seed)] if folds == 1 else kfold_splits(classes, folds, seed)


def glyph_setup(epochs: int, folds: list[ClassSplit] | None = None) -> TrialSetup:
    return TrialSetup(loss=LOSS, dataset="glyphs", data_root=None, image_size=IMAGE_SIZE,
                      folds=tuple(folds or glyph_folds()), ks=(1, 2),
                      fixed={"epochs": epochs, "batch_size": 32, "embedding_size": 16, "backbone": "glyphcnn",
                             "seed": 0})


def space() -> Any:
    return define_by_run(LOSS, DEFAULTS)


def paper_point() -> dict[str, float]:
    return default_config(LOSS, DEFAULTS)


class ResultLog(tune.Callback):
    """Every result every trial reported, as the driver received them (the last one included)."""

    def __init__(self) -> None:
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.configs: dict[str, dict[str, Any]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.results[trial.trial_id].append(dict(result))
        self.configs[trial.trial_id] = dict(trial.config)


def logged_results(experiment: Path, trial_id: str) -> list[dict[str, Any]]:
    """The results Ray wrote to a trial's result.json (a driver that died took its callbacks with it)."""
    return [json.loads(line) for line in (experiment / trial_id / "result.json").read_text().splitlines()]
