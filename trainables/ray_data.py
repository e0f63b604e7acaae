"""Ray's side of the data plane: the driver's decoded data enters the object store once per object.

Trials (via their TrialSetup) and final-stage tasks (via run_tasks) get an ObjectRef; Ray copies
the object to each node that needs it once, and every process there reads its numpy arrays
zero-copy from the node's shared store, so co-located trials hold one copy per node.
"""
from __future__ import annotations

import weakref
from typing import Any

import ray

from trainables.data.packed import check_fits

# Data object -> (Ray job, its ObjectRef): the search, the retrains and a repeated call share one put.
_shared: weakref.WeakKeyDictionary[Any, tuple[str, ray.ObjectRef]] = weakref.WeakKeyDictionary()


def object_stores() -> dict[str, float]:
    """Object store capacity in bytes of every live node, by node address."""
    return {node["NodeManagerAddress"] + f" ({node['NodeID'][:8]})": node["Resources"].get("object_store_memory", 0.0)
            for node in ray.nodes() if node["Alive"]}


def share(data: Any) -> ray.ObjectRef:
    """`data` in the object store, refused first if its decoded images cannot fit every node's store.

    Decoded data (anything with `nbytes`: a PackedDataset) is put once per Ray job, however often the
    search and the final stage ask; in-memory data (glyphs, test doubles) is small and put each time.
    """
    nbytes = getattr(data, "nbytes", 0)
    if not nbytes:
        return ray.put(data)
    job = ray.get_runtime_context().get_job_id()
    seen = _shared.get(data)
    if seen is not None and seen[0] == job:
        return seen[1]
    check_fits(nbytes, object_stores(), f"the {getattr(data, 'name', 'training')} data")
    ref = ray.put(data)
    _shared[data] = (job, ref)
    return ref
