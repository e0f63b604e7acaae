"""bench/leakage.py: its selection rules, its read-the-retrain-off-the-curve premise, and that the product never
imports it (it opens the test classes on purpose)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainables.config import TrainConfig
from trainables.data.splits import fixed_split
from trainables.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("leakage_bench", ROOT / "bench" / "leakage.py")
leakage = sys.modules.setdefault("leakage_bench", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(leakage)


def test_nothing_the_product_imports_reaches_the_benchmark() -> None:
    # search.py and every module of the installed packages, in a fresh interpreter: no module loaded from bench/.
    code = ("import importlib, pkgutil, sys\n"
            "import search\n"
            "for pkg in ('trainables', 'spaces', 'results'):\n"
            "    for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "print('\\n'.join(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = [Path(f).resolve() for f in done.stdout.splitlines() if f]
    assert any(f == ROOT / "search.py" for f in files)  # it did import the product from this checkout
    assert not [f for f in files if f.is_relative_to(ROOT / "bench")]


def test_dmltunes_retrain_is_the_all_classes_run_stopped_at_its_epoch(blobs) -> None:
    # The benchmark reads the retrain (config, epoch e) off the 3-epoch run on all training classes; a
    # separate e-epoch retrain must score the same on A and B. A step schedule makes the lr vary by epoch.
    split = fixed_split(blobs.train_classes, 0.1, seed=0)
    halves = leakage.partitions(blobs.test_classes, 2, seed=0)
    cfg = TrainConfig(loss="proxy_anchor", loss_params={"margin": 0.1, "alpha": 32.0}, lr=1e-3, proxy_lr=1e-1,
                      epochs=3, batch_size=16, embedding_size=8, lr_schedule="step", lr_step=1, seed=3)
    curve = leakage.curves(leakage.Job("test", cfg, split, halves), blobs)
    assert curve.shape == (2, 2, 3) and not np.isnan(curve).any()
    retrain = Trainer(TrainConfig(**cfg.to_dict() | {"epochs": 2}), blobs.subset(blobs.train_classes, train=True))
    for _ in range(2):
        retrain.train_epoch()
    with blobs.test_access():
        emb, labels = retrain.embed(blobs.subset(blobs.test_classes))
    for p, half in enumerate(halves):
        in_a = np.isin(labels, half)
        assert curve[p, 0, 1] == leakage.recall_at_1(emb[in_a], labels[in_a])
        assert curve[p, 1, 1] == leakage.recall_at_1(emb[~in_a], labels[~in_a])


def test_partitions_are_disjoint_equal_halves_and_seeded() -> None:
    classes = np.arange(114, 228)
    halves = leakage.partitions(classes, 4, seed=1)
    assert len(set(halves)) == 4 and all(len(h) == 57 and set(h) < set(classes.tolist()) for h in halves)
    assert halves == leakage.partitions(classes, 4, seed=1) != leakage.partitions(classes, 4, seed=2)


def test_proposals_start_at_the_papers_defaults_and_follow_the_seed() -> None:
    points = leakage.propose("proxy_anchor", 4, seed=0)
    assert len(points) == 4 and points[0] == {"lr": 1e-3, "weight_decay": 1e-4, "proxy_lr": 0.1,
                                              "margin": 0.1, "alpha": 32.0}
    assert all(1e-4 <= p["lr"] <= 1e-2 and 0 <= p["margin"] <= 1 for p in points)
    assert points == leakage.propose("proxy_anchor", 4, seed=0) and points != leakage.propose("proxy_anchor", 4, seed=1)


def test_each_protocol_selects_on_its_own_scores_only() -> None:
    val = np.array([[0.5, 0.7, 0.6], [0.6, 0.9, np.nan]])  # ours: config 0, epoch 1 (config 1 diverged)
    test = np.zeros((2, 2, 2, 3))  # [configs, partitions, (A, B), epochs]
    test[1, 0, 0, 2] = 0.95  # partition 0: A's best is config 1, epoch 2
    test[0, 1, 0, 0] = 0.97  # partition 1: config 0, epoch 0
    test[0, :, 1, 1] = 0.5  # B of ours' choice
    test[1, 1, 0, 2] = np.nan  # a divergence in the all-classes run: that epoch never wins
    test[1, :, 1, 0] = 0.99  # B's best, which nothing may choose
    rows = leakage.select(val, test)
    assert [r.leaky for r in rows] == [(1, 2), (0, 0)] and {r.ours for r in rows} == {(0, 1)}
    assert (rows[0].leaky_a, rows[0].leaky_b, rows[0].ours_b) == (95.0, 0.0, 50.0)
    with pytest.raises(ValueError, match="diverged"):
        leakage.best(np.full((2, 3), np.nan))


def test_choosing_on_a_noisy_half_is_optimistic_and_choosing_on_validation_is_not() -> None:
    # Same true curves, independent noise on validation, A and B: the leaky choice's A - B is
    # positive on average, ours is centred on zero (a seeded draw, so the test is deterministic).
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.8, 0.9, (8, 1, 1, 10))
    leaky, ours = [], []
    for _ in range(50):
        test = truth + 0.01 * rng.standard_normal((8, 10, 2, 10))
        val = truth[:, 0, 0] + 0.01 * rng.standard_normal((8, 10))
        rows = leakage.select(val, test)
        leaky += [r.leaky_a - r.leaky_b for r in rows]
        ours += [r.ours_a - r.ours_b for r in rows]
    assert np.mean(leaky) > 1.0 and abs(np.mean(ours)) < 0.2


def test_bad_sizes_are_refused_with_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        leakage.main(["--configs", "1"])
    assert exit_.value.code == 2 and "configs at least 2" in capsys.readouterr().err


def test_a_saved_run_prints_the_table_and_ends_with_the_optimism_line(tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    arrays = {}
    for s in range(2):  # [configs, epochs] and [configs, partitions, (A, B), epochs]
        arrays[f"val{s}"], arrays[f"test{s}"] = rng.uniform(0.8, 0.9, (3, 4)), rng.uniform(0.8, 0.9, (3, 5, 2, 4))
    np.savez(tmp_path / "curves.npz", **arrays)
    leakage.main(["--load", str(tmp_path / "curves.npz")])
    lines = capsys.readouterr().out.splitlines()
    rows = [leakage.select(arrays[f"val{s}"], arrays[f"test{s}"]) for s in range(2)]
    leaky = np.mean([r.leaky_a - r.leaky_b for seed in rows for r in seed])
    ours = np.mean([r.ours_a - r.ours_b for seed in rows for r in seed])
    assert "10 (seed, partition) pairs" in "\n".join(lines)
    assert lines[-1] == f"optimism leaky={leaky:.2f} ours={ours:.2f}"
