"""One run's settings, resolved and validated once: the CLI builds it, every stage reads it, config.json keeps it.

It lives next to TrainConfig because it is where a trial's fixed TrainConfig fields come from
(`RunConfig.train_fields`). It imports neither Ray nor torch: the report reads it back from
config.json without loading either.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.config import LR_SCHEDULES, RECIPE_FIELDS

if TYPE_CHECKING:
    from trainables.data import DatasetRecipe

PROTOCOLS = ("fixed", "kfold")
FOLDS = 10  # the thesis's 10-fold cross-validation (docs/protocol.md#k-fold-validation)
SEARCH_FOLDS = 3  # folds per trial during the search: 3 models per config, not 10
# `--final-epochs auto`: retrain each config for as many epochs as its search trial needed to reach
# its best validation Recall@1 (the early-stopping point), counted in passes over the training set.
AUTO = "auto"
# `--top-k` when not given: glyphs is the minutes-long demo, so one config; on a real benchmark the
# top three, because 10 % of the training classes rank close configs noisily and the three test
# results show whether the validation ranking holds. The headline result stays config #1.
TOP_K = {"glyphs": 1}
TOP_K_REAL = 3
# Settings a dataset's recipe supplies when no flag gives them (DatasetRecipe has a field of each name).
RECIPE_DEFAULTS = ("backbone", "image_size", "embedding_size", "batch_size", *RECIPE_FIELDS)
# config.json keys an older dmltune wrote that are not settings of the run: read and dropped.
OBSOLETE_KEYS = frozenset({"resume"})  # how that driver started, not what the run is


def default_top_k(dataset: str, trials: int) -> int:
    """How many configs to retrain when `--top-k` is not given (never more than there are trials)."""
    return min(TOP_K.get(dataset, TOP_K_REAL), trials)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RunConfig:
    """The resolved command line: every flag with the dataset's defaults filled in, plus the recipe's lr and ks."""

    loss: str | None  # the searched loss; None in a tournament (several `losses`)
    dataset: str
    data_root: str | None
    trials: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    final_epochs: int | str  # a number of epochs, or AUTO
    top_k: int
    seeds: int
    val_fraction: float
    protocol: str
    folds: int | None  # kfold only
    search_folds: int | None  # kfold only
    batch_size: int
    backbone: str
    image_size: int
    embedding_size: int
    pretrained: bool
    warmup_epochs: int
    freeze_bn: bool
    lr_schedule: str
    lr_step: int
    lr_gamma: float
    grad_clip: float
    m_per_class: int | None  # None: the trainer's default for the loss
    workers: int
    cpus_per_trial: float
    gpus_per_trial: float
    address: str | None
    storage_path: str | None
    dashboard: bool
    seed: int
    out: Path
    lr: float  # the dataset's AdamW lr: the paper-defaults trial and the search space's centre
    ks: tuple[int, ...]  # the dataset's Recall@K
    argv: tuple[str, ...] = ()  # the command line as typed, for provenance
    pretrained_weights: str | None = None  # the ImageNet weights fetched before the trials (--pretrained)
    # Every loss searched: (loss,) for a single-loss run (filled in when a config.json from before
    # tournaments has none), several for a tournament (--loss all or a list), each with its own study.
    losses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.losses and self.loss is not None:
            object.__setattr__(self, "losses", (self.loss,))
        object.__setattr__(self, "losses", tuple(self.losses))
        if not self.losses or len(set(self.losses)) != len(self.losses):
            raise ValueError(f"--loss must name one or more distinct losses, but got {self.losses!r}.")
        if self.loss != (self.losses[0] if len(self.losses) == 1 else None):
            raise ValueError(f"RunConfig.loss must be the one loss searched, or None in a tournament of several, "
                             f"but got loss={self.loss!r} with losses={self.losses!r}.")
        at_least = {"trials": 1, "max_epochs": 1, "grace_period": 1, "reduction_factor": 2, "top_k": 1, "seeds": 1,
                    "batch_size": 1, "image_size": 1, "embedding_size": 1, "warmup_epochs": 0, "lr_step": 1,
                    "workers": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{_flag(name)} must be a whole number of at least {low}, but got {value!r}.")
        if self.final_epochs != AUTO and (isinstance(self.final_epochs, bool) or not isinstance(self.final_epochs, int)
                                          or self.final_epochs < 1):
            raise ValueError(f"--final-epochs must be {AUTO} or a whole number of at least 1, "
                             f"but got {self.final_epochs!r}.")
        ranges = {"val_fraction": (0 < self.val_fraction < 1, "between 0 and 1 (exclusive)"),
                  "lr_gamma": (0 < self.lr_gamma <= 1, "greater than 0 and at most 1"),
                  "grad_clip": (self.grad_clip >= 0, "0 or more"),
                  "cpus_per_trial": (self.cpus_per_trial > 0, "greater than 0"),
                  "gpus_per_trial": (self.gpus_per_trial >= 0, "0 or more"), "lr": (self.lr > 0, "greater than 0"),
                  "m_per_class": (self.m_per_class is None or self.m_per_class >= 0, "0 or more")}
        for name, (ok, rule) in ranges.items():
            if not ok:
                raise ValueError(f"{_flag(name)} must be {rule}, but got {getattr(self, name)}.")
        for name, choices in [("protocol", PROTOCOLS), ("lr_schedule", LR_SCHEDULES)]:
            if getattr(self, name) not in choices:
                raise ValueError(f"{_flag(name)} must be one of {', '.join(choices)}, but got {getattr(self, name)!r}.")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be Recall@K cut-offs of at least 1, but got {self.ks!r}.")
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Settings that are each valid but not together, named by their flags."""
        if self.top_k > self.trials:
            raise ValueError(f"--top-k {self.top_k} exceeds --trials {self.trials}: there are not that many configs.")
        if self.grace_period > self.max_epochs:
            raise ValueError(f"--grace-period {self.grace_period} exceeds --max-epochs {self.max_epochs}.")
        if self.m_per_class is not None and self.m_per_class > self.batch_size:
            raise ValueError(f"--m-per-class {self.m_per_class} exceeds the batch size {self.batch_size}; "
                             "lower it or raise --batch-size.")
        if self.protocol == "fixed":
            if self.folds is not None or self.search_folds is not None:
                raise ValueError("--folds and --search-folds belong to --protocol kfold: add it, or drop them.")
            return
        if self.folds is None or self.folds < 2:
            raise ValueError(f"--folds must be at least 2 for k-fold validation, but got {self.folds}.")
        if self.search_folds is None or self.search_folds < 1:
            raise ValueError(f"--search-folds must be at least 1, but got {self.search_folds}.")
        if self.search_folds > self.folds:
            raise ValueError(f"--search-folds {self.search_folds} exceeds --folds {self.folds}.")

    @classmethod
    def resolve(cls, given: Mapping[str, Any], rec: DatasetRecipe) -> RunConfig:
        """The run's settings from the command line's values (None where no flag was given), `rec` (the
        dataset's recipe) filling the gaps. 0 and False are given values, never replaced."""
        chosen = dict(given)
        for name in RECIPE_DEFAULTS:
            if chosen.get(name) is None:
                chosen[name] = getattr(rec, name)
        if chosen.get("top_k") is None:
            chosen["top_k"] = default_top_k(chosen["dataset"], chosen["trials"])
        if chosen.get("workers") is None:  # the trial's other CPUs decode images
            chosen["workers"] = max(0, int(chosen["cpus_per_trial"]) - 1)
        if chosen.get("protocol") == "kfold":
            chosen["folds"] = chosen.get("folds") or FOLDS
            chosen["search_folds"] = chosen.get("search_folds") or min(SEARCH_FOLDS, chosen["folds"])
        chosen["out"] = Path(chosen["out"])
        chosen["argv"] = tuple(chosen.get("argv", ()))
        chosen["losses"] = tuple(chosen.get("losses", ()))
        return cls(**chosen, lr=rec.lr, ks=tuple(rec.ks))

    @property
    def tournament(self) -> bool:
        """Whether the run searches several losses, each chosen and tested by its own selection."""
        return len(self.losses) > 1

    def train_fields(self) -> dict[str, Any]:
        """TrainConfig fields the search does not vary (a trial adds its point and epochs, the retrain its seed)."""
        return {"batch_size": self.batch_size, "embedding_size": self.embedding_size, "backbone": self.backbone,
                "seed": self.seed, "m_per_class": self.m_per_class, "grad_clip": self.grad_clip,
                "pretrained": self.pretrained, "num_workers": self.workers,
                **{name: getattr(self, name) for name in RECIPE_FIELDS}}

    def to_json(self) -> dict[str, Any]:
        """config.json's "command": plain JSON values, read back equal by `from_json`."""
        return asdict(self) | {"out": str(self.out), "ks": list(self.ks), "argv": list(self.argv),
                               "losses": list(self.losses)}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> RunConfig:
        """The settings config.json recorded; a file from another dmltune version is refused, naming the keys."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(payload) - set(known) - OBSOLETE_KEYS)
        required = {name for name, f in known.items() if f.default is MISSING}
        missing = sorted(required - set(payload))
        if unknown or missing:
            raise ValueError(f"config.json's command was written by another dmltune version (missing "
                             f"{missing or 'nothing'}, unknown {unknown or 'nothing'}); read that run with the "
                             "version that wrote it.")
        values = {k: v for k, v in payload.items() if k in known}
        return cls(**values | {"out": Path(values["out"]), "ks": tuple(values["ks"]),
                               "argv": tuple(values.get("argv", ())), "losses": tuple(values.get("losses", ()))})
