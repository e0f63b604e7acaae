"""Cluster scale: cluster.yaml passes Ray's own validation; trials spread over nodes and pack onto GPUs;
only the driver reads --data-root."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conftest
import numpy as np
import pandas as pd
import pytest
import ray
import torch
import yaml
from ray import cloudpickle, tune
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from data_fixtures import write_cub
from ray_helpers import ResultLog, glyph_setup, space
from test_final import final_cfg, selected

import search
from results import ledger, tables
from trainables import ray_data
from results.final import retrain_and_test
from trainables.data import build_dataset
from trainables.data.packed import PackedDataset, Pixels, layout
from trainables.data.splits import fixed_split
from trainables.ray_cluster import run_tasks, trial_device, trial_slots
from trainables.ray_data import share
from trainables.tune_search import SearchSettings, run_search

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validation(cluster_config) -> None:
    validate_config(prepare_config(copy.deepcopy(cluster_config)))


def test_cluster_yaml_runs_our_ray_on_gpu_workers_with_the_gpu_extra(cluster_config) -> None:
    assert cluster_config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    nodes = cluster_config["available_node_types"]
    head = nodes.pop(cluster_config["head_node_type"])
    assert head["resources"].get("GPU", 0) == 0
    assert nodes and all(node["resources"]["GPU"] >= 1 for node in nodes.values())
    assert any("dmltune[gpu]" in command for command in cluster_config["setup_commands"])


def test_cluster_yaml_holds_no_secrets_and_starts_no_dashboard(cluster_config) -> None:
    text = (REPO / "cluster.yaml").read_text()
    assert "ssh_private_key" not in cluster_config["auth"]
    assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN|aws_secret|password|token:", text, re.IGNORECASE)
    head_start = " ".join(cluster_config["head_start_ray_commands"])
    assert "--include-dashboard=false" in head_start and "0.0.0.0" not in head_start


def test_a_trial_uses_cuda_only_when_ray_gave_it_a_gpu(caplog) -> None:
    assert trial_device([], cuda_available=True) == "cpu"  # a CPU trial on a GPU node leaves the GPUs alone
    assert trial_device(["0"], cuda_available=True) == "cuda"  # whole or fractional: Ray set CUDA_VISIBLE_DEVICES
    with caplog.at_level(logging.WARNING):
        assert trial_device(["0"], cuda_available=False) == "cpu"
    assert "no CUDA device" in caplog.text


class Concurrency(tune.Callback):
    """Which trials were running together, seen at every result."""

    def __init__(self) -> None:
        self.together: set[frozenset[str]] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        running = sorted(t.trial_id for t in trials if t.status == "RUNNING")
        self.together.update(frozenset((a, b)) for i, a in enumerate(running) for b in running[i + 1:])


@pytest.fixture(scope="module")
def two_gpu_nodes():
    """A head and a worker node on this machine, 2 CPUs and 1 pretend GPU each."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
    cluster.add_node(num_cpus=2, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_trials_spread_over_both_nodes_and_half_gpu_trials_share_a_gpu(two_gpu_nodes, tmp_path) -> None:
    assert trial_slots(cpus_per_trial=1, gpus_per_trial=0.5) == 4
    log, concurrency = ResultLog(), Concurrency()
    run_search(tmp_path, glyph_setup(epochs=3), space(), [], echo=lambda line: None, callbacks=[log, concurrency],
               settings=SearchSettings(trials=4, max_epochs=3, grace_period=3, cpus_per_trial=1, gpus_per_trial=0.5))
    placed = {trial: results[-1] for trial, results in log.results.items()}
    assert len(placed) == 4
    by_node: dict[str, list[str]] = defaultdict(list)
    for trial, result in placed.items():
        by_node[result["node_id"]].append(trial)
        assert len(result["gpu_ids"]) == 1 and result["device"] == "cpu"  # pretend GPUs: torch sees none
    assert sorted(len(trials) for trials in by_node.values()) == [2, 2]
    for first, second in by_node.values():
        # Both halves of one node's GPU: the same device id, and the two trials ran at the same time.
        assert placed[first]["gpu_ids"] == placed[second]["gpu_ids"]
        assert frozenset((first, second)) in concurrency.together


def probe(shared: dict[str, Any], item: int, device: str) -> dict[str, Any]:
    """A final-stage job that reports where it ran, and whether all four jobs were running at once.

    Each job leaves a mark in a shared directory (the nodes are on this machine) and waits, up to a
    minute, for the others' marks: jobs run one after another would never see all four.
    """
    marks = Path(shared["dir"])
    (marks / str(item)).touch()
    deadline = time.monotonic() + 60
    while len(list(marks.iterdir())) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"item": item, "device": device, "gpu_ids": ray.get_runtime_context().get_accelerator_ids()["GPU"],
            "threads": torch.get_num_threads(), "pid": os.getpid(), "data": sum(shared["data"]),
            "together": len(list(marks.iterdir())) == 4}


def test_final_stage_jobs_are_ray_tasks_with_a_trials_resources_side_by_side(two_gpu_nodes, tmp_path) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    shared = {"data": [1, 2, 3], "dir": str(tmp_path)}
    by_index = dict(run_tasks(probe, shared, list(range(4)), cpus=1, gpus=0.5, address=None))
    assert all(by_index[i]["item"] == i for i in range(4)) and {d["data"] for d in by_index.values()} == {6}
    for d in by_index.values():
        assert d["pid"] != os.getpid() and d["threads"] == 1
        assert len(d["gpu_ids"]) == 1 and d["device"] == "cpu"  # pretend GPUs: torch sees none
        assert d["together"]  # four half-GPU jobs on two GPUs: all at once, not one after another


def refuse_two(dataset: list[int], item: int, device: str) -> int:
    if item == 2:
        raise ValueError("item 2 cannot be done")
    return item


def test_a_failing_final_stage_task_raises_its_error(two_gpu_nodes) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert list(run_tasks(refuse_two, [], [], cpus=1, gpus=0.5, address=None)) == []
    with pytest.raises(ValueError, match="item 2 cannot be done"):
        list(run_tasks(refuse_two, [], [0, 1, 2, 3], cpus=1, gpus=0.5, address=None))


def test_retrain_and_test_on_gpu_tasks_give_the_drivers_results(two_gpu_nodes, blobs, tmp_path) -> None:
    cloudpickle.register_pickle_by_value(conftest)  # the blobs dataset's class, for the workers
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    results = {}
    for gpus in ("0", "0.5"):
        run_dir = tmp_path / gpus
        run_dir.mkdir()
        cfg = final_cfg(run_dir, "--seeds", "2", "--gpus-per-trial", gpus)
        lines: list[str] = []
        final = retrain_and_test(run_dir, cfg, blobs, [split], selected(best_epoch=2), echo=lines.append)
        assert len(ledger.read(run_dir / ledger.LEDGER_NAME)) == 2 and len(lines) == 2
        results[gpus] = final.filter(like="test_")
    # Same configs, seeds and epochs: the retrieval ranks agree exactly. The driver runs its jobs on
    # every core and a task on its one CPU, so float sums run in another order; on this 2-core machine
    # a near-tie moved one test MAP@R by 7e-5. A retrain with another seed or epoch count moves it by
    # far more than the tolerance.
    recalls = [c for c in results["0"] if c.startswith("test_recall@")]
    assert recalls
    np.testing.assert_array_equal(results["0"][recalls].to_numpy(), results["0.5"][recalls].to_numpy())
    np.testing.assert_allclose(results["0"].to_numpy(), results["0.5"].to_numpy(), rtol=0, atol=1e-3)


def test_a_local_ray_starts_no_idle_workers_that_no_trial_can_use() -> None:
    """Tune's trial actors carry a runtime env, so Ray's prestarted idle workers only cost start-up CPU."""
    probe = ("import os, subprocess, time; from trainables.ray_cluster import init_ray; init_ray(None, num_cpus=2); "
             "time.sleep(2); print(subprocess.run(['ps', '-o', 'args=', '-s', str(os.getsid(0))], "
             "capture_output=True, text=True).stdout.split('\\n').count('ray::IDLE'))")
    # A new local Ray (RAY_ADDRESS=local), not the cluster this module's fixture may have running.
    env = {k: v for k, v in os.environ.items() if k != "RAY_prestart_worker_first_driver"} | {"RAY_ADDRESS": "local"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          start_new_session=True)  # its own session: ps sees only its Ray
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "0"


def forbid_root(root: str) -> Callable[[], None]:
    """A Ray worker setup hook: any open or listing of a path under `root` raises PermissionError there.

    The driver (this process) is no Ray worker, so it alone may read the data, as on a real cluster
    whose GPU workers do not have the folder.
    """
    def install() -> None:
        prefix = os.path.join(os.path.realpath(root), "")

        def audit(event: str, args: tuple) -> None:
            if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, Path)):
                path = os.path.realpath(os.fsdecode(args[0]))
                if os.path.join(path, "").startswith(prefix):
                    raise PermissionError(f"a Ray worker opened {path}, under the data root")

        sys.addaudithook(audit)
    return install


@contextlib.contextmanager
def workers_without(cluster: Cluster, root: Path) -> Iterator[None]:
    """This module's cluster, joined again by a driver whose worker processes cannot read `root`."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.shutdown()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"worker_process_setup_hook": forbid_root(str(root))})
    try:
        with pytest.raises(PermissionError):  # the guard holds in a worker
            ray.get(ray.remote(lambda: (root / "images.txt").read_text()).remote())
        yield
    finally:
        ray.shutdown()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)


def cub_argv(root: Path, out: Path, cluster: Cluster) -> list[str]:
    return ["--loss", "proxy_anchor", "--dataset", "cub", "--data-root", str(root), "--trials", "2",
            "--max-epochs", "1", "--backbone", "resnet18", "--image-size", "32", "--embedding-size", "16",
            "--batch-size", "12", "--address", cluster.address, "--storage-path", str(out.parent / "storage"),
            "--out", str(out)]


def test_trials_and_final_stage_tasks_never_open_the_data_root(two_gpu_nodes, tmp_path, capsys) -> None:
    root = tmp_path / "cub"
    write_cub(root, classes=(1, 2, 3, 4, 5, 6, 101, 102, 103), per_class=6)
    out = tmp_path / "run"
    with workers_without(two_gpu_nodes, root):
        assert search.main(cub_argv(root, out, two_gpu_nodes)) == 0, capsys.readouterr().err
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and set(trials["state"]) <= {"complete", "pruned"}
    entries = ledger.read(out / ledger.LEDGER_NAME)
    assert len(entries) == 2 and all(0 <= e["metrics"]["recall@1"] <= 1 for e in entries)


def test_a_search_whose_trials_all_fail_ends_with_the_first_error_and_its_log(two_gpu_nodes, tmp_path, capsys,
                                                                              monkeypatch) -> None:
    root = tmp_path / "cub"
    write_cub(root, classes=(1, 2, 3, 4, 5, 6, 101, 102, 103), per_class=3)
    out = tmp_path / "run"
    monkeypatch.setattr(search, "trial_data", lambda dataset, echo: None)  # trials read the files, as before
    with workers_without(two_gpu_nodes, root):
        assert search.main(cub_argv(root, out, two_gpu_nodes)) == 1
    err = capsys.readouterr().err
    assert "all 2 trials failed" in err and "PermissionError" in err and "under the data root" in err
    assert "Traceback" not in err and len(err.splitlines()) <= 4
    log = err.split("Its log: ")[1].strip()
    assert Path(log).is_file() and "PermissionError" in Path(log).read_text()


def private_bytes() -> int:
    """This process's unique memory (private clean + dirty pages, from /proc): a private copy of the data shows here."""
    fields = dict(line.split(":") for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[k].split()[0]) * 1024 for k in ("Private_Clean", "Private_Dirty"))


@ray.remote(num_cpus=0)
class TrialLike:
    """Takes the data as run_trial does (ray.get of the ref in its setup), reads every byte, and keeps it."""

    def read(self, setup: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
        self.dataset = ray.get(setup["data"])
        checksum = int(self.dataset.pixels.data.sum(dtype=np.int64))  # every page of the buffer
        batch = self.dataset.subset(self.dataset.train_classes, train=True).batch(list(range(8)))
        return checksum, private_bytes(), tuple(batch.shape)


def test_four_co_located_trials_hold_one_copy_of_the_data(two_gpu_nodes, tmp_path, monkeypatch) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    monkeypatch.setenv("DMLTUNE_CACHE", str(tmp_path / "cache"))
    cub = build_dataset("cub", write_cub(tmp_path / "cub", classes=(1, 2, 101), per_class=20).root, 224)
    items = np.flatnonzero(np.isin(cub.labels, cub.train_classes))

    def packed(side: int) -> PackedDataset:  # random pixels, `side` x `side` images
        shapes = np.tile([[side, side]], (len(items), 1))
        data = np.random.default_rng(side).integers(0, 256, int(shapes.prod(1).sum()) * 3, dtype=np.uint8)
        return PackedDataset(cub, items, Pixels(data, shapes, layout(shapes)))

    # 40 images of 2.7 MB: 108 MB, far above the noise; the small one makes each trial import and
    # allocate what reading costs before the big one is measured.
    small, big = packed(256), packed(950)
    head = ray.get_runtime_context().get_node_id()
    trials = [TrialLike.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
              for _ in range(4)]
    before = [r[1] for r in ray.get([t.read.remote({"data": share(small)}) for t in trials])]
    read = ray.get([t.read.remote({"data": share(big)}) for t in trials])  # nested, as in TrialSetup
    assert {r[0] for r in read} == {int(big.pixels.data.sum(dtype=np.int64))}
    assert {r[2] for r in read} == {(8, 3, 224, 224)}
    grown = [after - start for (_, after, _), start in zip(read, before)]
    # A trial that copied the data would grow by its 108 MB; sharing the node's store, each grows by
    # a batch's crops only (4-10 MB here). Bound: all four together less than half of one copy.
    assert sum(grown) < big.nbytes / 2, [f"{g / 1e6:.1f} MB" for g in grown]
    for t in trials:
        ray.kill(t)


def test_data_larger_than_a_nodes_object_store_is_refused_before_any_trial(two_gpu_nodes, tmp_path, capsys,
                                                                           monkeypatch) -> None:
    root = tmp_path / "cub"
    write_cub(root, classes=(1, 2, 3, 4, 5, 101), per_class=3)
    out = tmp_path / "run"
    monkeypatch.setattr(ray_data, "object_stores", lambda: {"gpu-node-7": 20_000.0})  # a 20 kB store
    assert search.main(cub_argv(root, out, two_gpu_nodes)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the cub data takes") and "gpu-node-7" in err and "--object-store-memory" in err
    assert len(err.splitlines()) == 1 and tables.load_study(out).trials == []  # no trial started
