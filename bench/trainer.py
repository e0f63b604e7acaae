"""Training steps per second of our Trainer against a minimal hand-written PyTorch loop, in one run.

    python bench/trainer.py                      # CPU, one thread: glyphcnn at 32 px, resnet18 at 64 px
    python bench/trainer.py --device cuda        # on a GPU (bf16 autocast + channels_last in both loops)
    python bench/trainer.py --repeats 9 --threads 2

Both loops do the same work per step: the same model and initial weights, the same in-memory uint8
images gathered by index and scaled to [0, 1], Proxy-Anchor's loss, AdamW with the proxy param
group, element-wise gradient clipping at 10. The ratio is therefore what the trainer's own
bookkeeping costs (batch planning, device moves, lr schedule, loss accounting). The two loops run
interleaved epoch by epoch, alternating which goes first, and each repeat gives one paired ratio;
the table reports medians. On CPU the clock is the process's CPU time (time.process_time): on a
shared machine, wall time mostly measures how long the process waited for a core (the wall-clock
ratio is printed beside it). On a GPU it is wall time after synchronising.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainables.config import TrainConfig  # noqa: E402
from trainables.data.base import InMemoryImages  # noqa: E402
from trainables.losses import build_loss  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402

PA = {"margin": 0.1, "alpha": 32.0}  # Proxy-Anchor's defaults


@dataclass(frozen=True)
class Case:
    backbone: str
    channels: int
    image_size: int
    batch_size: int
    steps: int  # steps per timed epoch
    classes: int = 32

    @property
    def name(self) -> str:
        return f"{self.backbone}@{self.image_size}px"


# Short epochs, many repeats: adjacent epochs of the two loops see the same machine load.
CASES = (Case("glyphcnn", 1, 32, 64, 8), Case("resnet18", 3, 64, 32, 3))


def fake_images(case: Case, seed: int = 0) -> InMemoryImages:
    g = torch.Generator().manual_seed(seed)
    n = case.batch_size * case.steps
    images = torch.randint(0, 256, (n, case.channels, case.image_size, case.image_size), dtype=torch.uint8, generator=g)
    return InMemoryImages(images, torch.arange(n) % case.classes)


def config(case: Case) -> TrainConfig:
    return TrainConfig(loss="proxy_anchor", loss_params=PA, lr=1e-3, proxy_lr=1e-1, epochs=10 ** 6,
                       batch_size=case.batch_size, embedding_size=64, backbone=case.backbone, m_per_class=0)


def hand_loop(cfg: TrainConfig, data: InMemoryImages, device: torch.device,
              fast: bool | None = None) -> Callable[[], None]:
    """The loop a person writes by hand: returns a function that runs one epoch of it.

    `fast`: bf16 autocast and channels_last, as the trainer on CUDA (default: on CUDA); False is a plain fp32 loop.
    """
    torch.manual_seed(cfg.seed)
    cuda = device.type == "cuda" if fast is None else fast
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = build_model(cfg.backbone, data.images.shape[1], cfg.embedding_size).to(device, memory_format=fmt)
    loss_fn = build_loss(cfg.loss, int(data.labels.max()) + 1, cfg.embedding_size, cfg.loss_params).to(device)
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": cfg.lr},
                             {"params": loss_fn.parameters(), "lr": cfg.proxy_lr}], weight_decay=cfg.weight_decay)
    params = list(model.parameters()) + list(loss_fn.parameters())
    images, labels = data.images.to(device), data.labels.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    steps = len(images) // cfg.batch_size

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(images), device=device)
        for i in range(steps):
            idx = order[i * cfg.batch_size: (i + 1) * cfg.batch_size]
            x = images[idx].float().div_(255).contiguous(memory_format=fmt)
            with autocast:
                embeddings = model(x)
            loss = loss_fn(embeddings.float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
            opt.step()

    return epoch


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(case: Case, device: torch.device, repeats: int) -> dict[str, float]:
    cfg, data = config(case), fake_images(case)
    loops = {"trainer": Trainer(cfg, data, device=device).train_epoch, "hand": hand_loop(cfg, data, device)}
    for run in loops.values():  # untimed: allocator, lazy imports, cuDNN autotuning
        run()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in loops}
    for r in range(repeats):
        for name in (("trainer", "hand") if r % 2 == 0 else ("hand", "trainer")):
            times[name].append(timed(loops[name], device))
    clock = 0 if device.type == "cuda" else 1  # wall on a GPU, CPU time on CPU

    def ratios(k: int) -> list[float]:  # trainer steps/s over hand-loop steps/s, one per repeat
        return [h[k] / t[k] for t, h in zip(times["trainer"], times["hand"])]

    return {"trainer": case.steps / statistics.median(t[clock] for t in times["trainer"]),
            "hand": case.steps / statistics.median(t[clock] for t in times["hand"]),
            "ratio": statistics.median(ratios(clock)), "low": min(ratios(clock)), "high": max(ratios(clock)),
            "wall_ratio": statistics.median(ratios(0))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=15, help="interleaved timed epochs per loop and case")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a search trial uses one by default)")
    p.add_argument("--cases", nargs="*", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    load = os.getloadavg()[0]
    print(f"{where}; {args.repeats} interleaved repeats; torch {torch.__version__}; "
          f"load average {load:.2f} on {os.cpu_count()} cores at start")
    clock = "wall time" if device.type == "cuda" else "CPU time"
    print(f"| case | batch | steps/epoch | trainer steps/s | hand loop steps/s | ratio (median, {clock}) "
          "| ratio range | ratio (median, wall) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        if case.name not in args.cases:
            continue
        r = bench(case, device, args.repeats)
        print(f"| {case.name} | {case.batch_size} | {case.steps} | {r['trainer']:.2f} | {r['hand']:.2f} | "
              f"{r['ratio']:.3f} | {r['low']:.3f}-{r['high']:.3f} | {r['wall_ratio']:.3f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
