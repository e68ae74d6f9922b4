"""Multi-process runs on JAX's own runtime: initialisation, the global mesh, and host <-> global arrays.

Each process loads its own slice of every global batch (``EpochIterator``'s process slice). The host
work of a step (prompts, judging, rewards) needs the whole batch on every process, so the slices'
records are exchanged with ``all_gather_objects``; the arrays themselves are built as global arrays
whose shards each process fills from identical host data. Outputs that are global arrays come back to
every host with ``to_host``. Process 0 alone writes metrics, reports, exported models (gathered to its
host with ``host_model``, a collective every process joins) and the summary; orbax checkpoints are saved
by every process (each its own shards). With one process all of this is the identity.

Launch: ``python -m grlhf.train ... distributed.enabled=true distributed.coordinator_address=HOST:PORT
distributed.num_processes=N distributed.process_id=I`` in each process, or the same through
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (or a cluster JAX detects itself).
``tests/trainer/test_multihost.py`` runs two processes on localhost (gloo CPU collectives) and checks them
against one process with two devices.
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
    """``jax.distributed.initialize`` when the config or the environment asks for a multi-process run.

    The flags ``distributed.coordinator_address`` / ``num_processes`` / ``process_id`` win over the
    environment's ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``; what neither
    gives is left to JAX's cluster detection (SLURM, Open MPI, TPU pods, ...). Must run before anything
    initialises a JAX backend (``jax.devices()``, a computation); CPU collectives use gloo unless another
    implementation is configured.
    """
    dist = cfg.distributed
    if not (dist.enabled or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    if jax.distributed.is_initialized():
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("distributed.initialize must run before any JAX computation or jax.devices() call "
                           "(the backend is already initialised, so it would see only this process's devices)")
    # Without cross-process collectives the CPU client cannot run programs over other processes' devices.
    # (Checked without touching the backend: jax.default_backend() would initialise it.)
    if getattr(jax.config, "jax_cpu_collectives_implementation", None) in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {}
    address = dist.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        kwargs["coordinator_address"] = address
    num_processes = dist.num_processes if dist.num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    if num_processes is not None:
        kwargs["num_processes"] = int(num_processes)
    process_id = dist.process_id if dist.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if process_id is not None:
        kwargs["process_id"] = int(process_id)
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


def host_model(model) -> Any:
    """``model`` with its parameters as host numpy arrays, for writing from process 0 (e.g. an HF export).

    Parameters that span processes are all-gathered, so *every* process must call this, in the same
    order; processes other than 0 get None (they keep no copy). With one process: ``model`` itself.
    """
    if jax.process_count() == 1:
        return model
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    main = is_main()
    params = jax.tree.map(lambda x: to_host(x) if main else (to_host(x), None)[1], params)
    return nnx.merge(graphdef, params, rest) if main else None


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (e.g. until process 0 has written a file the others
    read). A no-op with one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_indices(local: np.ndarray) -> list[int]:
    """The global batch's record indices from each process's slice (process order)."""
    return [int(i) for i in all_gather_objects([int(i) for i in local])]


__all__ = ["all_gather_objects", "barrier", "gather_indices", "host_model", "initialize", "is_main", "to_host"]
