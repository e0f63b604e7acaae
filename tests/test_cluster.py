"""Cluster scale: cluster.yaml passes Ray's own validation; trials spread over nodes and pack onto GPUs."""
from __future__ import annotations

import copy
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray import tune
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.cluster_utils import Cluster
from ray_helpers import ResultLog, glyph_setup, space

from trainables.ray_tune import SearchSettings, run_search, trial_device, trial_slots

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
