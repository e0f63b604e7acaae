"""The Ray cluster itself: join or start it, check what a command asks of it, and place work on it.

Pre-flight checks refuse, before any work, an address nothing answers at, storage that cannot be
written or a dashboard that cannot start. `assigned_device` and `trial_slots` say what a trial gets;
`run_tasks` sends the final stage's retrains and test evaluations where the trials went. The
search itself (Tune, Optuna, ASHA) is trainables/tune_search.py.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from trainables.data.base import DMLDataset
from trainables.private_api import auto_address, skip_worker_prestart
from trainables.ray_data import share

logger = logging.getLogger(__name__)


def trial_device(gpu_ids: Sequence[str], cuda_available: bool) -> str:
    """cuda when Ray gave this trial a GPU (whole or a fraction) and torch can use it, else cpu.

    Ray points CUDA_VISIBLE_DEVICES at the assigned GPU, so "cuda" is that GPU, shared by the trials
    packed onto it. A trial given no GPU stays on the CPU even on a GPU node, leaving the GPUs to
    the trials that reserved them.
    """
    if not gpu_ids:
        return "cpu"
    if not cuda_available:
        logger.warning("Ray assigned GPU %s to this trial but torch sees no CUDA device (a CPU-only torch "
                       "build, or GPUs a test only pretends); training on the CPU.", ",".join(gpu_ids))
        return "cpu"
    return "cuda"


def assigned_device() -> tuple[list[str], str]:
    """(the GPU ids Ray gave the calling task or trial, the torch device it should use: `trial_device`)."""
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return gpu_ids, trial_device(gpu_ids, torch.cuda.is_available())


def is_uri(path: str) -> bool:
    """A storage URI (s3://, gs://, ...) rather than a path on this machine."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) is not None


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster can run at once now (at least 1: an autoscaler may add nodes)."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 0) / cpus_per_trial + 1e-9)
    if gpus_per_trial:
        slots = min(slots, int(total.get("GPU", 0) / gpus_per_trial + 1e-9))
    return max(1, slots)


def run_tasks(job: Callable[..., Any], dataset: DMLDataset, items: Sequence[Any], *, cpus: float, gpus: float,
              address: str | None) -> Iterator[tuple[int, Any]]:
    """(index, job(dataset, items[index], device)) of every item, each a Ray task holding one trial's resources.

    The final stage's retrains and test evaluations go where the trials went (GPU workers, several
    at once), not to the driver, which on a cluster sits on the CPU head. The dataset enters the
    object store once (ray_data.share): give the driver's decoded half (packed.for_workers), and the
    tasks never open --data-root. All tasks are submitted at once and their results come back as
    each finishes; if one fails, its error is raised and the tasks still running are cancelled.
    """
    if not items:
        return iter(())
    init_ray(address)
    task = ray.remote(_on_worker).options(num_cpus=cpus, num_gpus=gpus)
    shared = share(dataset)
    refs = {task.remote(job, shared, item, max(1, int(cpus))): i for i, item in enumerate(items)}
    return _as_completed(refs)


def _as_completed(refs: dict[ray.ObjectRef, int]) -> Iterator[tuple[int, Any]]:
    pending = list(refs)
    try:
        while pending:
            (done,), pending = ray.wait(pending, num_returns=1)
            yield refs[done], ray.get(done)
    finally:
        for ref in pending:
            ray.cancel(ref)


def _on_worker(job: Callable[..., Any], dataset: DMLDataset, item: Any, threads: int) -> Any:
    torch.set_num_threads(threads)
    _, device = assigned_device()
    return job(dataset, item, device)


def check_address(address: str, timeout_s: float = 3.0) -> None:
    """Refuse, within seconds, a Ray address nothing answers at: ray.init would retry for minutes.

    Raises ValueError naming the address and what to do.
    """
    if address.startswith("ray://"):
        # Under Ray Client, Tune runs the search on the cluster: the study, the run directory and the
        # progress lines would all be on the head node, not here.
        raise ValueError(f"--address {address}: Ray Client (ray://) is not supported, because the study and "
                         "the run directory must live where the search runs. Run search.py on the cluster's "
                         "head node (ray attach cluster.yaml) with --address auto.")
    target = address
    if target == "auto":
        try:  # Ray's own lookup: RAY_ADDRESS, then the cluster `ray start` last recorded on this machine
            target = auto_address()
        except ConnectionError as err:
            raise ValueError(f"--address auto found no running Ray cluster on this machine ({err}). "
                             "Start one (ray start --head, or ray up cluster.yaml and run on its head), "
                             "or drop --address to use a local Ray.") from None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address} is not HOST:PORT or auto.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(f"--address {address}: nothing answers at {host}:{port} within {timeout_s:g}s "
                         f"({err.strerror or err}). Is the cluster up (ray status on its head) and the port "
                         "reachable from here?") from None


def check_storage_path(storage_path: str) -> None:
    """A local storage path must be writable now; a URI (s3://, gs://) is Ray's to reach from every node.

    Raises ValueError naming the path and the fix.
    """
    if is_uri(storage_path):
        return
    path = Path(storage_path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"--storage-path {storage_path} cannot be written ({err.strerror or err}); give a "
                         "directory every node mounts and can write, or an s3:// or gs:// URI.") from None


def check_dashboard() -> None:
    """--dashboard needs the packages of `ray[default]`, which `ray[tune]` does not bring."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as err:
        raise ValueError(f"--dashboard needs Ray's dashboard packages ({err}): pip install 'ray[default]'.") from None


def ray_init_kwargs(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> dict[str, Any]:
    """ray.init's arguments: quiet, and a dashboard only when asked, then on 127.0.0.1 alone."""
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                              "include_dashboard": dashboard}
    if address:
        return kwargs | {"address": address}
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"  # reachable from this machine only (ssh -L to view it remotely)
    return kwargs | {"num_cpus": num_cpus}


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Start a local Ray (or join a cluster) quietly: no usage stats, our progress lines only."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Tune's new console output prints its experiment banner even at verbose=0; the legacy
    # reporter honours verbose=0, leaving ProgressLines as the only per-trial output.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch of short trials triggers a "snapshot too often" warning that has
    # no action for the user; experiment state is still snapshotted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's console printer would swap builtins.print for tqdm_ray's (we draw no bars); the echo
    # callables Tune pickles with ProgressLines (print, by default) must stay the real one.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    # Tune's automatic CSV and TensorBoard loggers write files on the driver for every result;
    # run_search adds the JSON one (result.json) itself.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local single-user Ray: no token file
        skip_worker_prestart()
    context = ray.init(**ray_init_kwargs(address, num_cpus, dashboard))
    if dashboard and context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}")
