"""Multi-process runs on JAX's own runtime: initialisation, the global mesh, and host <-> global arrays.

Each process loads its own slice of every global batch (``EpochIterator``'s process slice). The host
work of a step (prompts, judging, rewards) needs the whole batch on every process, so the slices'
records are exchanged with ``all_gather_objects``; the arrays themselves are built as global arrays
whose shards each process fills from identical host data. Outputs that are global arrays come back to
every host with ``to_host``. With one process all of this is the identity.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np

from grlhf.config import Config
from grlhf.models.qwen_vl.sharding import to_host


def initialize(cfg: Config) -> None:
    """``jax.distributed.initialize`` when the config or the environment asks for a multi-process run."""
    dist = cfg.distributed
    if not (dist.enabled or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    if jax.distributed.is_initialized():
        return
    if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if dist.coordinator_address:
        kwargs["coordinator_address"] = dist.coordinator_address
    if dist.num_processes is not None:
        kwargs["num_processes"] = dist.num_processes
    if dist.process_id is not None:
        kwargs["process_id"] = dist.process_id
    jax.distributed.initialize(**kwargs)


def is_main() -> bool:
    """Process 0 writes metrics, reports and exported models."""
    return jax.process_index() == 0


def all_gather_objects(local: Sequence[Any]) -> list[Any]:
    """Concatenate every process's list of JSON-serialisable records, in process order."""
    if jax.process_count() == 1:
        return list(local)
    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps(list(local)).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([payload.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:payload.size] = payload
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes.reshape(-1)), -1)
    out: list[Any] = []
    for row, size in zip(gathered, np.asarray(sizes).reshape(-1)):
        out.extend(json.loads(row[:int(size)].tobytes().decode()))
    return out


def gather_indices(local: np.ndarray) -> list[int]:
    """The global batch's record indices from each process's slice (process order)."""
    return [int(i) for i in all_gather_objects([int(i) for i in local])]


__all__ = ["all_gather_objects", "gather_indices", "initialize", "is_main", "to_host"]
