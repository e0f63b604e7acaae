"""How much the usual protocol overstates Recall@1, and how close dmltune's reported number is to the truth.

    python bench/leakage.py              # proxy_anchor, 5 seeds x 8 configs x 10 epochs, 10 partitions
    python bench/leakage.py --quick      # 2 seeds x 4 configs x 6 epochs, 5 partitions
    python bench/leakage.py --loss ms --seeds 6 --save curves.npz
    python bench/leakage.py --load curves.npz    # the table again, from saved curves

The glyph test classes are split into two disjoint halves of equal size, over several random
partitions: A is the "test set" a paper reports on, B holds fresh classes nothing ever selects on,
the truth. For each seed, one set of configs is drawn from the loss's search space (the paper's
defaults first, then random points: spaces.define_by_run under Optuna's RandomSampler), and each
config is trained twice with the same seed and budget:
- on all training classes, scored on A and on B after every epoch (one embedding of the test half
  per epoch; R@1 within A and within B for every partition);
- on the fit classes of the product's fixed split (`fixed_split(train_classes, 0.1, seed)`), scored
  on the validation classes after every epoch, as a search trial is.
Both protocols then choose from these same trained models:
- leaky (the Proxy-Anchor and Roth et al. code): the (config, epoch) with the best R@1 on A; it
  reports that R@1 on A.
- dmltune's: the (config, epoch) with the best validation R@1; it retrains that config on all
  training classes for that many epochs (`--final-epochs auto`) and tests once on A. That retrain
  is the all-classes run of the same config stopped at that epoch: same seed, same classes, and
  an lr and batch order that depend only on (config, epoch) (trainables/trainer.py), so it is
  read off that run's curve instead of trained again (tests/test_leakage_bench.py checks the
  equality).
Each choice's R@1 on B is its true performance on unseen classes. Optimism = A − B of the choice;
the cost of leakage-free selection = B of ours − B of leaky's.

What keeps the comparison honest:
- both protocols see the same proposals, the same trained weights and the same per-epoch budget;
  only what they select on differs, so a gap is the selection's, not luck in training;
- B is recorded every epoch but never selects anything, and A and B are exchangeable (a random
  half each), so an unbiased protocol's A − B averages zero over partitions;
- proposals do not adapt to any score. A leaky TPE adapts its proposals to A as well, so the leaky
  optimism measured here is a lower bound; ASHA is not modelled (every trial runs the full budget
  in both protocols);
- the mean ± std is over every (seed, partition); partitions of one seed share their models, so
  the standard error (`se`) is taken over the seeds' means, the independent unit;
- a partition's two halves differ in difficulty (some characters are harder than others) by the
  same amount for every model, which dominates A − B of a single pair; the paired difference
  "leaky optimism − ours" per (seed, partition) cancels it and leaves the selection's share.

This script opens the test classes on purpose: it lives in bench/ and nothing that search.py
imports may import it (tests/test_leakage_bench.py asserts that).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spaces import OptimiserDefaults, default_config, define_by_run  # noqa: E402
from trainables.config import RECIPE_FIELDS, TrainConfig  # noqa: E402
from trainables.data import recipe  # noqa: E402
from trainables.data.base import DMLDataset  # noqa: E402
from trainables.data.glyphs import GlyphsDataset  # noqa: E402
from trainables.data.splits import ClassSplit, fixed_split  # noqa: E402
from trainables.metrics import retrieval_metrics  # noqa: E402
from trainables.trainer import DivergedError, Trainer  # noqa: E402

VAL_FRACTION = 0.1  # the product's --val-fraction default


@dataclass(frozen=True)
class Job:
    """One training run: a config on all training classes ("test": scored on A and B of every
    partition) or on the fit classes ("val": scored on the validation classes), every epoch."""

    kind: str
    cfg: TrainConfig
    split: ClassSplit
    halves: tuple[tuple[int, ...], ...]  # per partition, the classes of A (B is the rest of the test half)


def propose(loss: str, n: int, seed: int) -> list[dict[str, float]]:
    """The paper's defaults, then n - 1 random points of the loss's space: one proposal set per seed."""
    lr = recipe("glyphs").lr
    space = define_by_run(loss, OptimiserDefaults(lr=lr))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    points = [default_config(loss, OptimiserDefaults(lr=lr))]
    for _ in range(n - 1):
        trial = study.ask()
        space(trial)
        points.append(dict(trial.params))
    return points


def partitions(test_classes: np.ndarray, count: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """`count` random halves A of the test classes (sorted class ids); B is each one's complement."""
    half = len(test_classes) // 2
    return tuple(tuple(sorted(int(c) for c in np.random.default_rng([seed, p]).permutation(test_classes)[:half]))
                 for p in range(count))


def recall_at_1(embeddings: torch.Tensor, labels: np.ndarray) -> float:
    return retrieval_metrics(embeddings, labels, (1,), map_at_r=False)["recall@1"]


def curves(job: Job, dataset: DMLDataset) -> np.ndarray:
    """R@1 after every epoch, NaN from a divergence on: [epochs] for "val", [partitions, 2 (A, B), epochs]
    for "test"."""
    torch.set_num_threads(1)
    epochs = job.cfg.epochs
    if job.kind == "val":
        train, val = dataset.subset(job.split.fit, train=True), dataset.subset(job.split.val)
        out = np.full(epochs, np.nan)
    else:
        train = dataset.subset(job.split.fit + job.split.val, train=True)
        with dataset.test_access():  # the leak this benchmark measures, on purpose
            test = dataset.subset(dataset.test_classes)
        out = np.full((len(job.halves), 2, epochs), np.nan)
    trainer = Trainer(job.cfg, train)
    for e in range(epochs):
        try:
            trainer.train_epoch()
        except DivergedError:
            break
        if job.kind == "val":
            out[e] = trainer.evaluate(val, (1,))["recall@1"]
            continue
        emb, labels = trainer.embed(test)
        for p, half in enumerate(job.halves):
            in_a = np.isin(labels, half)
            out[p, 0, e] = recall_at_1(emb[in_a], labels[in_a])
            out[p, 1, e] = recall_at_1(emb[~in_a], labels[~in_a])
    return out


def _run(job: Job) -> np.ndarray:
    """A worker process's entry: the glyphs dataset comes from its cache."""
    return curves(job, GlyphsDataset())


def best(scores: np.ndarray) -> tuple[int, int]:
    """(config, epoch) of the highest score in [configs, epochs]; NaN (diverged) never wins, the first of ties does."""
    if np.isnan(scores).all():
        raise ValueError("every config diverged in every epoch; nothing to select. Lower the lr range or the budget.")
    c, e = np.unravel_index(np.nanargmax(scores), scores.shape)
    return int(c), int(e)


@dataclass(frozen=True)
class Outcome:
    """One (seed, partition): each protocol's choice and its R@1 on A (reported) and B (true), in points."""

    leaky: tuple[int, int]
    ours: tuple[int, int]
    leaky_a: float
    leaky_b: float
    ours_a: float
    ours_b: float


def select(val: np.ndarray, test: np.ndarray) -> list[Outcome]:
    """Both protocols' choices for every partition. val: [configs, epochs]; test: [configs, partitions, 2, epochs].

    A config whose validation run diverged is never retrained by the product, so ours skips all of
    its epochs; the leaky protocol keeps the best A-epoch before a divergence, as a saved best
    checkpoint would.
    """
    ours = best(np.where(np.isnan(val).any(axis=1, keepdims=True), np.nan, val))
    rows = []
    for p in range(test.shape[1]):
        leaky = best(test[:, p, 0])
        rows.append(Outcome(leaky=leaky, ours=ours,
                            leaky_a=100 * test[leaky[0], p, 0, leaky[1]], leaky_b=100 * test[leaky[0], p, 1, leaky[1]],
                            ours_a=100 * test[ours[0], p, 0, ours[1]], ours_b=100 * test[ours[0], p, 1, ours[1]]))
    return rows


def seed_jobs(loss: str, seed: int, n_configs: int, epochs: int, n_partitions: int,
              dataset: DMLDataset) -> list[Job]:
    """A seed's runs, "val" then "test" for each proposal, in proposal order."""
    rec = recipe("glyphs")
    split = fixed_split(dataset.train_classes, VAL_FRACTION, seed)
    halves = partitions(dataset.test_classes, n_partitions, seed)
    jobs = []
    for params in propose(loss, n_configs, seed):
        cfg = TrainConfig.from_params(loss, params, epochs=epochs, batch_size=rec.batch_size,
                                      embedding_size=rec.embedding_size, backbone=rec.backbone, seed=seed,
                                      **{k: getattr(rec, k) for k in RECIPE_FIELDS})
        jobs += [Job("val", cfg, split, halves), Job("test", cfg, split, halves)]
    return jobs


def summary(values: Sequence[float], per_seed: int, signed: bool = False) -> str:
    """mean ± std over all (seed, partition) values, and the standard error over the seeds' means."""
    x = np.asarray(values, dtype=float)
    seeds = x.reshape(-1, per_seed).mean(axis=1)
    text = f"{x.mean():{'+' if signed else ''}.2f} ± {x.std(ddof=1) if len(x) > 1 else 0.0:.2f}"
    return text + (f" (se {seeds.std(ddof=1) / np.sqrt(len(seeds)):.2f})" if len(seeds) > 1 else "")


def report(seeds: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Print the table of both protocols over these seeds' (val, test) curves; returns the mean optimisms."""
    outcomes: list[Outcome] = []
    for val, test in seeds:
        outcomes += select(val, test)

    def col(name: str) -> np.ndarray:
        return np.array([getattr(o, name) for o in outcomes])

    k = seeds[0][1].shape[1]
    print(f"\nmean ± std over {len(outcomes)} (seed, partition) pairs; se: standard error over the "
          f"{len(seeds)} seeds' means; R@1 in points")
    print("| protocol | reported R@1 (A) | true R@1 (B) | optimism A − B |")
    print("|---|---:|---:|---:|")
    for name, label in (("leaky", "leaky: config and epoch by A"),
                        ("ours", "dmltune: by validation, retrain, test once on A")):
        a, b = col(f"{name}_a"), col(f"{name}_b")
        print(f"| {label} | {summary(a, k)} | {summary(b, k)} | {summary(a - b, k, signed=True)} |")
    # A partition's A and B differ in difficulty by ~3 points at 57 classes each, the same for every
    # model: the paired difference of the two optimisms cancels that and isolates the selection's share.
    excess = (col("leaky_a") - col("leaky_b")) - (col("ours_a") - col("ours_b"))
    print(f"\nleaky optimism − ours, paired by (seed, partition): {summary(excess, k, signed=True)}")
    print(f"cost of leakage-free selection in true R@1 (B ours − B leaky): "
          f"{summary(col('ours_b') - col('leaky_b'), k, signed=True)}")
    print(f"same (config, epoch) chosen by both: {100 * np.mean([o.leaky == o.ours for o in outcomes]):.0f}% of pairs")
    return {name: float(np.mean(col(f"{name}_a") - col(f"{name}_b"))) for name in ("leaky", "ours")}


def train_seed(jobs: Sequence[Job], dataset: DMLDataset, pool: ProcessPoolExecutor | None) -> tuple[np.ndarray, ...]:
    """A seed's (val [configs, epochs], test [configs, partitions, 2, epochs]) curves."""
    results = list(pool.map(_run, jobs)) if pool else [curves(j, dataset) for j in jobs]
    return np.stack(results[0::2]), np.stack(results[1::2])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loss", default="proxy_anchor")
    p.add_argument("--quick", action="store_true", help="2 seeds, 4 configs, 6 epochs, 5 partitions")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5; --quick 2)")
    p.add_argument("--configs", type=int, help="trial budget: configs per seed (default 8, the product's --trials)")
    p.add_argument("--epochs", type=int, help="epochs per config (default 10, the product's --max-epochs)")
    p.add_argument("--partitions", type=int, help="random A/B partitions per seed (default 10)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="training processes at once, one torch thread each (default: 2, or 1 on a 1-core machine)")
    p.add_argument("--save", type=Path, help="write every finished seed's curves to this .npz (after each seed)")
    p.add_argument("--load", type=Path, help="print the table from a --save file instead of training")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.load:
        with np.load(args.load) as z:
            seeds = [(z[f"val{s}"], z[f"test{s}"]) for s in range(len(z.files) // 2)]
        print(f"{args.load}: {len(seeds)} seeds")
        optimism = report(seeds)
        print(f"optimism leaky={optimism['leaky']:.2f} ours={optimism['ours']:.2f}")
        return
    quick = {"seeds": 2, "configs": 4, "epochs": 6, "partitions": 5}
    full = {"seeds": 5, "configs": 8, "epochs": 10, "partitions": 10}
    n = {k: getattr(args, k) or (quick if args.quick else full)[k] for k in full}
    if min(n.values()) < 1 or n["configs"] < 2 or args.jobs < 1:
        p.error(f"seeds, epochs, partitions and jobs must be at least 1 and configs at least 2, but got {n}, "
                f"jobs={args.jobs}.")

    start, load = time.perf_counter(), os.getloadavg()[0]
    dataset = GlyphsDataset()
    n_test = len(dataset.test_classes)
    print(f"{args.loss} on glyphs: {n['seeds']} seeds x {n['configs']} configs x {n['epochs']} epochs, "
          f"{n['partitions']} partitions of the {n_test} test classes into A and B of {n_test // 2} and "
          f"{n_test - n_test // 2}; {args.jobs} process(es); load average {load:.2f} on {os.cpu_count()} cores",
          flush=True)
    pool = (ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
            if args.jobs > 1 else None)
    seeds: list[tuple[np.ndarray, ...]] = []
    try:
        for s in range(n["seeds"]):
            val, test = train_seed(seed_jobs(args.loss, s, n["configs"], n["epochs"], n["partitions"], dataset),
                                   dataset, pool)
            seeds.append((val, test))
            if args.save:
                np.savez(args.save, **{f"{kind}{i}": a for i, pair in enumerate(seeds)
                                       for kind, a in zip(("val", "test"), pair)})
            ours = best(val)
            print(f"seed {s}: ours chose config {ours[0]} epoch {ours[1] + 1} (val R@1 {100 * val[ours]:.2f}); "
                  f"leaky chose {sorted({(r.leaky[0], r.leaky[1] + 1) for r in select(val, test)})} over the "
                  f"partitions; {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    optimism = report(seeds)
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"wall {time.perf_counter() - start:.0f} s, CPU {cpu:.0f} s (this process and its workers); "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"optimism leaky={optimism['leaky']:.2f} ours={optimism['ours']:.2f}")


if __name__ == "__main__":
    main()
