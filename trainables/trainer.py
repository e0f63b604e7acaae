"""The one trainer: Ray trials, the final retrain and the tests all call it, and it never imports Ray.

One epoch = one pass over the training items in batches, then (optionally) an evaluation.
A checkpoint holds model, loss parameters (proxies/centres), optimiser, epoch and config, so a
trial killed mid-search resumes where it was. What else changes per epoch is a pure function of
(config, epoch): batch order, the lr schedule and whether the backbone is still in its warm-up, so
a resumed run needs no sampler or scheduler state. (The random crops of image files are the
exception: their RNG stream restarts on resume.)

The recipe follows Proxy-Anchor's official train.py (docs/datasets.md): warm-up epochs that train only
the embedding layer and the loss's parameters, optionally frozen backbone BatchNorm, a per-epoch
StepLR (or cosine), element-wise gradient clipping. On CUDA the training forward runs in bf16
autocast with channels_last tensors; the CPU path stays fp32 and is the one the tests run.
Embeddings for evaluation are always fp32, so a checkpoint scores the same on either device.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainables.batches import epoch_batches
from trainables.config import TrainConfig, learned_fields
from trainables.data.augment import normalize
from trainables.data.base import InMemoryImages
from trainables.data.packed import PackedImages
from trainables.losses import build_loss
from trainables.metrics import nmi, retrieval_metrics
from trainables.models import build_model


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the config is unusable, not the code broken."""


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Class ids of a dataset from `DMLDataset.subset` (each exposes `.labels`)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"{type(dataset).__name__} has no `.labels`; datasets must come from DMLDataset.subset().")
    return np.asarray(labels, dtype=np.int64)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The lr multiplier during 0-based `epoch`, as torch's StepLR / CosineAnnealingLR stepped once per epoch."""
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** (epoch // cfg.lr_step)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / (cfg.schedule_epochs or cfg.epochs)))
    return 1.0


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA GPUs that have it (fp32's range: no loss scaling needed); None (fp32) anywhere else."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's convolutions (tensor cores) prefer it; the default layout elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


class _EpochBatchSampler:
    """Batch sampler of the one training DataLoader: yields the batches the trainer set for this epoch.

    One loader for the whole run lets its worker processes persist across epochs; only the batches change.
    """

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Trainer:
    def __init__(self, cfg: TrainConfig, train_set: Dataset, *, device: str | torch.device = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.train_set = train_set
        labels = dataset_labels(train_set)
        self.classes = np.unique(labels)
        # PML's proxy losses index proxies by label: map class ids to 0..C-1.
        self.targets = torch.as_tensor(np.searchsorted(self.classes, labels))
        torch.manual_seed(cfg.seed)
        in_channels = getattr(train_set, "channels", None) or train_set[0][0].shape[0]
        self.amp_dtype = autocast_dtype(self.device)
        self.memory_format = memory_format(self.device)
        self.model = build_model(cfg.backbone, in_channels, cfg.embedding_size, pretrained=cfg.pretrained)
        self.model.to(self.device, memory_format=self.memory_format)
        self.loss = build_loss(cfg.loss, len(self.classes), cfg.embedding_size, cfg.loss_params).to(self.device)
        # Proxy-Anchor's bn_freeze: backbone BatchNorm layers stay in eval mode (running statistics fixed)
        # and their affine parameters do not train. (Its warm-up code re-enables the affine parameters
        # when the warm-up ends; here frozen means frozen for the whole run.)
        self.frozen_bn = [m for m in self.model.features.modules()
                          if isinstance(m, nn.modules.batchnorm._BatchNorm)] if cfg.freeze_bn else []
        for m in self.frozen_bn:
            m.requires_grad_(False)
        frozen = {id(p) for m in self.frozen_bn for p in m.parameters()}
        model_params = [p for p in self.model.parameters() if id(p) not in frozen]
        # What the warm-up holds still: the backbone (model.features), i.e. all but the embedding layer.
        self.backbone_params = [p for p in self.model.features.parameters() if id(p) not in frozen]
        loss_params = list(self.loss.parameters())
        groups: list[dict[str, Any]] = [{"params": model_params, "lr": cfg.lr}]
        if loss_params:
            groups.append({"params": loss_params, "lr": cfg.proxy_lr or cfg.lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.base_lrs = [g["lr"] for g in groups]
        self.trained_params = model_params + loss_params
        self.m_per_class = cfg.m_per_class if cfg.m_per_class is not None else (0 if loss_params else 4)
        # In-memory datasets are small by construction (uint8): keep them on the device, saving a copy per batch.
        self.images = train_set.images.to(self.device) if isinstance(train_set, InMemoryImages) else None
        self.sampler = _EpochBatchSampler()
        self.loader: DataLoader | None = None
        self.autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                         else contextlib.nullcontext())
        self.epoch = 0

    def _file_loader(self, dataset: Dataset, persistent: bool = False, **kwargs: Any) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=persistent and workers > 0,
                          collate_fn=getattr(dataset, "collate", None), **kwargs)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images on the device as floats in [0, 1] or normalised, targets 0..C-1) of this epoch."""
        self.sampler.batches = epoch_batches(self.targets.numpy(), self.cfg.batch_size, self.m_per_class,
                                             self.cfg.seed, self.epoch)
        if self.images is not None:
            # All of the epoch's indices in one copy to the device; then every batch is a gather there.
            order = torch.as_tensor(np.stack(self.sampler.batches)).to(self.device)
            targets = self.targets.to(self.device)
            for idx in order:
                yield self.images[idx].float().div_(255), targets[idx]
            return
        packed = isinstance(self.train_set, PackedImages)
        if packed and self.device.type == "cuda":
            # Decoded images: crops are drawn here and resized on the GPU (augment.py), with no loader
            # processes; the crop RNG is a function of (seed, epoch), so a resumed run draws the same.
            generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)
            for idx in self.sampler.batches:
                yield (normalize(self.train_set.batch(idx, self.device, generator)),
                       self.targets[idx].to(self.device, non_blocking=True))
            return
        if self.loader is None:
            # Created once, so its workers live from epoch to epoch; their augmentation seeds come
            # from the config's seed (the generator), not from whatever the global RNG holds.
            self.loader = self._file_loader(self.train_set, persistent=True, batch_sampler=self.sampler,
                                            generator=torch.Generator().manual_seed(self.cfg.seed))
        for (x, _), idx in zip(self.loader, self.sampler.batches):
            x = x.to(self.device, non_blocking=True)  # decoded images arrive as uint8 crops, normalised here
            yield normalize(x) if packed else x, self.targets[idx].to(self.device, non_blocking=True)

    def _train_mode(self) -> None:
        self.model.train()
        for m in self.frozen_bn:
            m.eval()
        warm = self.epoch < self.cfg.warmup_epochs
        for p in self.backbone_params:
            p.requires_grad_(not warm)  # no grad: AdamW skips them (no step, no decay), backward stops early
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * lr_factor(self.cfg, self.epoch)

    def train_epoch(self) -> float:
        """One pass over the training items; returns the mean loss. Raises DivergedError on NaN/inf."""
        if getattr(self.loss, "needs_proxy_init", False):
            # Proxies start at their class's mean embedding (PD-Loss option). Here, not in
            # __init__: the loss checkpoints whether it was done, so a resumed run does not redo it.
            embeddings, labels = self.embed(self.train_set)
            self.loss.init_proxies_from(embeddings, torch.as_tensor(np.searchsorted(self.classes, labels)))
        self._train_mode()
        # Summed on the device and read once per epoch: a per-batch .item() would make a GPU wait for
        # every step. A NaN loss is therefore noticed at the end of its epoch, which still ends the trial.
        total, count = torch.zeros((), device=self.device), 0
        for x, y in self._batches():
            with self.autocast:
                embeddings = self.model(x.contiguous(memory_format=self.memory_format))
            loss = self.loss(embeddings.float(), y)  # losses in fp32: exp(alpha * cos) overflows bf16's precision
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(self.trained_params, self.cfg.grad_clip)
            self.optimizer.step()
            total += loss.detach()
            count += 1
        mean = total.item() / max(count, 1)
        if not math.isfinite(mean):
            raise DivergedError(f"loss became {mean} in epoch {self.epoch + 1}; "
                                f"the config (lr={self.cfg.lr:g}, {dict(self.cfg.loss_params)}) diverges.")
        self.epoch += 1
        return mean

    @torch.no_grad()
    def embed(self, dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, np.ndarray]:
        """Embeddings (fp32, on CPU) and class ids of every item, in dataset order."""
        self.model.eval()
        labels = dataset_labels(dataset)
        if isinstance(dataset, InMemoryImages):
            batches: Any = (dataset.images[i: i + batch_size].to(self.device).float().div_(255)
                            for i in range(0, len(dataset), batch_size))
        elif isinstance(dataset, PackedImages):  # centre crops of decoded images: slicing, no loader processes
            batches = (normalize(dataset.batch(range(i, min(i + batch_size, len(dataset))), self.device))
                       for i in range(0, len(dataset), batch_size))
        else:
            batches = (x.to(self.device, non_blocking=True)
                       for x, _ in self._file_loader(dataset, batch_size=batch_size, shuffle=False))
        # Not under self.autocast: bf16 keeps ~3 significant digits, enough to reorder near
        # neighbours, and the scores selection and the test report should not depend on the device.
        chunks = [self.model(x.contiguous(memory_format=self.memory_format)).float().cpu() for x in batches]
        return torch.cat(chunks), labels

    def evaluate(self, queries: Dataset, ks: Sequence[int], gallery: Dataset | None = None,
                 with_nmi: bool = False) -> dict[str, float]:
        """Recall@K (and MAP@R) of these items against each other, or of queries against a gallery;
        with_nmi adds the NMI of a k-means over every item embedded (a minute on SOP's test half, so
        the test reports it and the per-epoch validation does not)."""
        q_emb, q_lab = self.embed(queries)
        g_emb, g_lab = self.embed(gallery) if gallery is not None else (None, None)
        out = retrieval_metrics(q_emb, q_lab, ks, gallery_embeddings=g_emb, gallery_labels=g_lab, device=self.device)
        if with_nmi:
            emb, lab = (q_emb, q_lab) if g_emb is None else (torch.cat([q_emb, g_emb]), np.concatenate([q_lab, g_lab]))
            out["nmi"] = nmi(emb, lab, seed=self.cfg.seed)
        return out

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        """Everything to resume training; optimizer=False keeps what evaluation needs (AdamW's state: 2x the model)."""
        state = {"model": self.model.state_dict(), "loss": self.loss.state_dict(), "epoch": self.epoch,
                 "config": self.cfg.to_dict()}
        return state | {"optimizer": self.optimizer.state_dict()} if optimizer else state

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint file of the same config."""
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True), origin=str(path))

    def load_state_dict(self, state: dict[str, Any], origin: str = "the checkpoint") -> None:
        """Take over a `state_dict()` of the same config (anything else is an error, not a silent mix).

        Runtime fields (num_workers) may differ: they change how the run executes, not what it learns.
        """
        if learned_fields(state["config"]) != learned_fields(self.cfg.to_dict()):
            raise ValueError(f"{origin} was written for config {state['config']}, "
                             f"not this trainer's {self.cfg.to_dict()}; start a new run directory.")
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        if "optimizer" in state:  # absent from a finished model's state_dict(optimizer=False)
            self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
