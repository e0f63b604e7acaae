"""The trainer's resolved configuration: validated once, saved in every checkpoint and result row."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Keys of a search-space point that configure the optimiser; every other key is the loss's.
OPTIMISER_KEYS = ("lr", "weight_decay", "proxy_lr")
LR_SCHEDULES = ("none", "step", "cosine")
# TrainConfig fields whose default is the dataset's recipe (DatasetRecipe has a field of each name).
RECIPE_FIELDS = ("warmup_epochs", "freeze_bn", "lr_schedule", "lr_step", "lr_gamma")
# Fields that say how a run executes, not what it learns: a checkpoint may resume under other values.
RUNTIME_FIELDS = frozenset({"num_workers"})


@dataclass(frozen=True)
class TrainConfig:
    loss: str
    loss_params: Mapping[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    proxy_lr: float | None = None  # lr of the loss's proxies/centres; None: the backbone's lr
    epochs: int = 10
    batch_size: int = 64
    embedding_size: int = 64
    backbone: str = "glyphcnn"
    m_per_class: int | None = None  # samples per class in a batch; None: 4 for pair losses, 0 (uniform) for proxy losses
    # Proxy-Anchor's train.py clips every gradient element (clip_grad_value_) of the model and the proxies at 10.
    grad_clip: float = 10.0  # clip each gradient element to [-grad_clip, grad_clip], 0 disables
    lr_schedule: str = "none"  # per-epoch lr: "step" (StepLR, the Proxy-Anchor recipe), "cosine" (to 0 at `epochs`)
    # "cosine": anneal to 0 at this epoch instead of `epochs`. A retrain stopped at a trial's best epoch
    # (--final-epochs auto) keeps the trial's horizon, so it follows the lr the trial had up to there.
    schedule_epochs: int | None = None
    lr_step: int = 10  # "step": multiply the lr by lr_gamma every lr_step epochs (Proxy-Anchor: 5-20)
    lr_gamma: float = 0.5  # "step": the factor (Proxy-Anchor: 0.5 on CUB/Cars, 0.25 on SOP/In-Shop)
    warmup_epochs: int = 0  # first epochs train only the embedding layer and the loss's parameters
    freeze_bn: bool = False  # backbone BatchNorm layers keep ImageNet statistics and affine params (CUB/Cars)
    pretrained: bool = False  # backbone starts from torchvision's ImageNet weights (else random init)
    num_workers: int = 0  # DataLoader processes decoding image files; 0 decodes in the training process
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 2,
            "embedding_size": self.embedding_size >= 2, "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0, "grad_clip": self.grad_clip >= 0,
            "proxy_lr": self.proxy_lr is None or self.proxy_lr > 0,
            "m_per_class": self.m_per_class is None or 0 <= self.m_per_class <= self.batch_size,
            "lr_step": self.lr_step >= 1, "lr_gamma": 0 < self.lr_gamma <= 1,
            "warmup_epochs": self.warmup_epochs >= 0, "num_workers": self.num_workers >= 0,
            "schedule_epochs": self.schedule_epochs is None or self.schedule_epochs >= self.epochs,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig.{name} is out of range, but got {getattr(self, name)!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, but got {self.lr_schedule!r}.")
        # A frozen config must not share a mutable dict with its caller.
        object.__setattr__(self, "loss_params", dict(self.loss_params))

    @classmethod
    def from_params(cls, loss: str, params: Mapping[str, Any], **fixed: Any) -> TrainConfig:
        """Split a search-space point into optimiser knobs and loss hyperparameters."""
        optim = {k: params[k] for k in OPTIMISER_KEYS if k in params}
        loss_params = {k: v for k, v in params.items() if k not in OPTIMISER_KEYS}
        return cls(loss=loss, loss_params=loss_params, **optim, **fixed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"loss_params": dict(self.loss_params)}

    def params(self) -> dict[str, float]:
        """The searched point back: optimiser knobs and loss hyperparameters, flat."""
        optim = {k: getattr(self, k) for k in OPTIMISER_KEYS if getattr(self, k) is not None}
        return optim | dict(self.loss_params)


def learned_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config (TrainConfig.to_dict()) without its runtime fields: what determines the trained weights."""
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}


def config_hash(payload: Mapping[str, Any]) -> str:
    """A short stable hash of a config (sorted JSON), used to name and match results."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


# The one selection metric and its direction: searcher, scheduler, selection and report share it.
SELECTION_METRIC = "val_recall@1"
SELECTION_MODE = "max"
