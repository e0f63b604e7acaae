"""The one trainer: Ray trials, the final retrain and the tests all call it, and it never imports Ray.

One epoch = one pass over the training items in batches, then (optionally) an evaluation.
A checkpoint holds model, loss parameters (proxies/centres), optimiser, epoch and config, so a
trial killed mid-search resumes where it was; batch order depends only on (seed, epoch).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainables.batches import epoch_batches
from trainables.config import TrainConfig
from trainables.data.base import InMemoryImages
from trainables.losses import build_loss
from trainables.metrics import retrieval_metrics
from trainables.models import build_model


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the config is unusable, not the code broken."""


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Class ids of a dataset from `DMLDataset.subset` (each exposes `.labels`)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"{type(dataset).__name__} has no `.labels`; datasets must come from DMLDataset.subset().")
    return np.asarray(labels, dtype=np.int64)


class Trainer:
    def __init__(self, cfg: TrainConfig, train_set: Dataset, *, device: str | torch.device = "cpu",
                 num_workers: int = 0) -> None:
        self.cfg, self.device, self.num_workers = cfg, torch.device(device), num_workers
        self.train_set = train_set
        labels = dataset_labels(train_set)
        self.classes = np.unique(labels)
        # PML's proxy losses index proxies by label: map class ids to 0..C-1.
        self.targets = torch.as_tensor(np.searchsorted(self.classes, labels))
        torch.manual_seed(cfg.seed)
        in_channels = train_set[0][0].shape[0]
        self.model = build_model(cfg.backbone, in_channels, cfg.embedding_size).to(self.device)
        self.loss = build_loss(cfg.loss, len(self.classes), cfg.embedding_size, cfg.loss_params).to(self.device)
        loss_params = list(self.loss.parameters())
        groups: list[dict[str, Any]] = [{"params": self.model.parameters(), "lr": cfg.lr}]
        if loss_params:
            groups.append({"params": loss_params, "lr": cfg.proxy_lr or cfg.lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.m_per_class = cfg.m_per_class if cfg.m_per_class is not None else (0 if loss_params else 4)
        self.epoch = 0

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index_batches = epoch_batches(self.targets.numpy(), self.cfg.batch_size, self.m_per_class,
                                      self.cfg.seed, self.epoch)
        if isinstance(self.train_set, InMemoryImages):
            for idx in index_batches:
                idx_t = torch.as_tensor(idx)
                yield self.train_set.images[idx_t].float().div_(255), self.targets[idx_t]
            return
        loader = DataLoader(self.train_set, batch_sampler=[i.tolist() for i in index_batches],
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for (x, _), idx in zip(loader, index_batches):
            yield x, self.targets[torch.as_tensor(idx)]

    def train_epoch(self) -> float:
        """One pass over the training items; returns the mean loss. Raises DivergedError on NaN/inf."""
        if getattr(self.loss, "needs_proxy_init", False):
            # Proxies start at their class's mean embedding (PD-Loss option). Here, not in
            # __init__: the loss checkpoints whether it was done, so a resumed run does not redo it.
            embeddings, labels = self.embed(self.train_set)
            self.loss.init_proxies_from(embeddings, torch.as_tensor(np.searchsorted(self.classes, labels)))
        self.model.train()
        total, count = 0.0, 0
        for x, y in self._batches():
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = self.loss(self.model(x), y)
            if not torch.isfinite(loss):
                raise DivergedError(f"loss became {loss.item()} in epoch {self.epoch + 1}; "
                                    f"the config (lr={self.cfg.lr:g}, {dict(self.cfg.loss_params)}) diverges.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            total, count = total + loss.item(), count + 1
        self.epoch += 1
        return total / max(count, 1)

    @torch.no_grad()
    def embed(self, dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, np.ndarray]:
        """Embeddings (on CPU) and class ids of every item, in dataset order."""
        self.model.eval()
        labels = dataset_labels(dataset)
        if isinstance(dataset, InMemoryImages):
            chunks = [self.model(dataset.images[i: i + batch_size].to(self.device).float().div_(255)).cpu()
                      for i in range(0, len(dataset), batch_size)]
        else:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers,
                                pin_memory=self.device.type == "cuda")
            chunks = [self.model(x.to(self.device, non_blocking=True)).float().cpu() for x, _ in loader]
        return torch.cat(chunks), labels

    def evaluate(self, queries: Dataset, ks: Sequence[int], gallery: Dataset | None = None) -> dict[str, float]:
        """Recall@K (and MAP@R) of these items against each other, or of queries against a gallery."""
        q_emb, q_lab = self.embed(queries)
        if gallery is None:
            return retrieval_metrics(q_emb, q_lab, ks, device=self.device)
        g_emb, g_lab = self.embed(gallery)
        return retrieval_metrics(q_emb, q_lab, ks, gallery_embeddings=g_emb, gallery_labels=g_lab,
                                 device=self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "loss": self.loss.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "config": self.cfg.to_dict()}

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint of the same config (anything else is an error, not a silent mix)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["config"] != self.cfg.to_dict():
            raise ValueError(f"Checkpoint {path} was written for config {state['config']}, "
                             f"not this trainer's {self.cfg.to_dict()}; start a new run directory.")
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
