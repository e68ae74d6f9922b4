"""The array bridge: a Qwen-VL model's NNX parameters -> ``(hf_name, torch.Tensor)`` pairs for a PyTorch engine
(vLLM's ``load_weights`` / ``reload_weights``), streamed in buckets of bounded size.

Names and layouts come from ``hf_params`` -- the table ``save_pretrained`` uses -- so the engine receives exactly
the tensors of an exported checkpoint: hub keys (``model.layers.N...``, ``visual.blocks.N...``, ``lm_head.weight``),
PyTorch layout (Linear ``[out, in]``, the 5-D Conv3d patch embedding), Qwen2-VL's vision ``attn.qkv`` fused as
HF ships it, the LM's q/k/v and gate/up separate (vLLM fuses them itself). With ``tie_word_embeddings`` the model
has no ``lm_head`` and, like the exported checkpoint, no ``lm_head.weight`` is sent. (vLLM ties its head to
``model.embed_tokens.weight``, but its CPU backend keeps a packed copy of the head that a reload refreshes only
under the name ``lm_head.weight``: ``rollout.vllm_engine`` sends the embedding under both names.)

Transfer: each array is cast (in JAX, still sharded) to the engine dtype, gathered onto one device
(``jax.device_put`` of a fully addressable array, ``process_allgather`` across hosts), put in PyTorch layout
in JAX (a new contiguous buffer) and handed over with ``torch.from_dlpack``, zero-copy. An untransformed
parameter already in the engine dtype on one device (norms, biases, the embedding) is therefore a view of the
trainer's own buffer. bfloat16 goes through DLPack as is; off CPU/GPU (TPU) the tensors are host copies.

Lifetime: ``push_weights`` calls ``consume(bucket)`` and drops its references (and empties the list) when it
returns, so no view outlives the call and a later donating train step can reuse the buffers. ``consume``
must copy what it keeps and must never write into the tensors: they may alias the trainer's parameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
from flax import nnx

from grlhf.models.qwen_vl import hf_params

Pair = tuple[str, torch.Tensor]
Consume = Callable[[list[Pair]], None]
DEFAULT_BUCKET_BYTES = 256 * 2**20
DLPACK_PLATFORMS = ("cpu", "gpu", "cuda", "rocm")  # where torch can share JAX's memory

JAX_DTYPES: dict[torch.dtype, Any] = {torch.float32: jnp.float32, torch.bfloat16: jnp.bfloat16,
                                      torch.float16: jnp.float16}


class PushStats(NamedTuple):
    """What one ``push_weights`` sent."""
    tensors: int
    bytes: int
    buckets: int


def jax_dtype(dtype: Optional[torch.dtype]) -> Optional[Any]:
    """The JAX dtype of an engine dtype (``None``: keep each parameter's own)."""
    if dtype is None:
        return None
    if dtype not in JAX_DTYPES:
        raise ValueError(f"unsupported engine dtype {dtype}; expected one of {', '.join(map(str, JAX_DTYPES))}")
    return JAX_DTYPES[dtype]


def _flat_params(model) -> list[tuple[str, nnx.Variable]]:
    """``(nnx_path, variable)`` of every parameter, in the order ``hf_tensors`` exports them."""
    return [(hf_params.path_to_str(path), var) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def model_params(model) -> Iterator[tuple[str, jax.Array]]:
    """``(nnx_path, array)`` of every parameter, the input of ``export``."""
    return ((path, var.get_value()) for path, var in _flat_params(model))


def gather(array: jax.Array, device: Optional[jax.Device] = None) -> jax.Array:
    """``array`` whole on one device: as is when it already lives on one (and ``device`` is None or that one),
    else copied onto ``device`` (default: this process's first local device). Arrays not fully addressable
    (multi-host) are all-gathered through the host first."""
    if len(array.devices()) == 1 and (device is None or array.devices() == {device}):
        return array
    device = device or jax.local_devices()[0]
    if not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return jax.device_put(multihost_utils.process_allgather(array, tiled=True), device)
    return jax.device_put(array, device)  # a replicated array reuses the device's own copy


def to_torch(array: jax.Array, *, via_host: bool = False) -> torch.Tensor:
    """A single-device JAX array as a torch tensor: a zero-copy DLPack view on CPU/GPU, else (or with
    ``via_host``) a host copy (bfloat16 bit-cast through uint16, which ``torch.from_numpy`` needs)."""
    (device,) = array.devices()
    if not via_host and device.platform in DLPACK_PLATFORMS:
        array.block_until_ready()
        return torch.from_dlpack(array)
    host = np.array(jax.device_get(array), order="C", copy=True)  # writable: torch refuses read-only buffers
    if host.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(host.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(host)


def _cast(array: jax.Array, dtype: Optional[Any]) -> jax.Array:
    return array if dtype is None or array.dtype == dtype else array.astype(dtype)


def export(params: Iterable[tuple[str, jax.Array]], config, *, dtype: Optional[torch.dtype] = None,
           device: Optional[jax.Device] = None, via_host: bool = False) -> Iterator[Pair]:
    """``(hf_name, tensor)`` for ``(nnx_path, array)`` pairs: cast, gathered, HF layout (``iter_nnx_to_hf``).

    The lazy form under ``push_weights`` (e.g. for ``reload_weights(weights_iterator=...)``): the tensors may be
    views of JAX buffers, so drop them before the next donating step and never write into them.
    """
    target = jax_dtype(dtype)
    prepared = ((path, gather(_cast(array, target), device)) for path, array in params)
    for key, array in hf_params.iter_nnx_to_hf(prepared, config):
        yield key, to_torch(array, via_host=via_host)


def plan_buckets(sizes: Sequence[tuple[str, int]], bucket_bytes: int) -> list[list[str]]:
    """Consecutive names grouped so each group's bytes stay <= ``bucket_bytes``; a larger tensor goes alone."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[list[str]] = []
    total = 0
    for name, nbytes in sizes:
        if not buckets or total + nbytes > bucket_bytes:
            buckets.append([])
            total = 0
        buckets[-1].append(name)
        total += nbytes
    return buckets


def _nbytes(variable: nnx.Variable, dtype: Optional[Any]) -> int:
    value = variable.get_value()
    return math.prod(value.shape) * np.dtype(dtype or value.dtype).itemsize


def push_weights(model, consume: Consume, *, dtype: Optional[torch.dtype] = None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, device: Optional[jax.Device] = None,
                 via_host: bool = False) -> PushStats:
    """Call ``consume(bucket)`` for each bucket of ``(hf_name, tensor)`` pairs covering every parameter once.

    ``dtype``: the engine's (torch.float32 / bfloat16 / float16; None keeps the stored one). ``bucket_bytes``
    bounds each bucket's total size. Tensors live on ``device`` (see ``gather``). The bucket's tensors are
    materialised just before the call and released after it: ``consume`` must copy what it keeps and not
    write into them (they may be views of the model's own buffers).
    """
    target = jax_dtype(dtype)
    flat = _flat_params(model)
    variables = dict(flat)
    names = {path: hf_params.hf_key(path)[0] for path, _ in flat}
    by_name = {names[path]: path for path, _ in flat}
    plan = plan_buckets([(names[path], _nbytes(var, target)) for path, var in flat], bucket_bytes)
    sent = 0
    for planned in plan:
        params = ((by_name[name], variables[by_name[name]].get_value()) for name in planned)
        bucket = list(export(params, model.config, dtype=dtype, device=device, via_host=via_host))
        sent += sum(tensor.numel() * tensor.element_size() for _, tensor in bucket)
        try:
            consume(bucket)
        finally:
            bucket.clear()  # no view outlives the call, even if consume kept the list
            del bucket
    return PushStats(tensors=len(flat), bytes=sent, buckets=len(plan))


@jax.jit
def _norms(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {key: jnp.sqrt(jnp.sum(jnp.square(value.astype(jnp.float32)))) for key, value in arrays.items()}


def checksums(model, dtype: Optional[torch.dtype] = None) -> dict[str, float]:
    """``hf_name -> L2 norm`` of every tensor ``push_weights`` sends with this ``dtype`` (values cast to it,
    squares summed in float32), computed in JAX on the arrays where they live (sharded ones stay sharded)."""
    target = jax_dtype(dtype)
    # cast outside the jit: inside, XLA may skip the rounding (xla_allow_excess_precision)
    arrays = {hf_params.hf_key(path)[0]: _cast(var.get_value(), target) for path, var in _flat_params(model)}
    return {key: float(value) for key, value in jax.device_get(_norms(arrays)).items()}


def tensor_checksum(tensor: torch.Tensor) -> float:
    """The engine side of ``checksums``: the L2 norm, squares summed in float32. (``torch.sum`` sums pairwise;
    ``torch.linalg.vector_norm`` on CPU lost ~3e-3 relative on 4e7 elements, too much to compare against.)"""
    return float(tensor.detach().to(torch.float32).square().sum().sqrt())


def verify_checksums(expected: dict[str, float], received: dict[str, float], *, rtol: float = 1e-5,
                     atol: float = 0.0, show: int = 5) -> None:
    """Raise ``ValueError`` naming the tensors whose norms differ (or are NaN), missing or unexpected.

    A norm catches a wrong, stale, zeroed or mis-cast tensor, not a transposed one of the same shape; an RL
    step can move a norm by less than ``rtol``, so it is a check of the transfer, not of the update.
    """
    missing = [name for name in expected if name not in received]
    unexpected = [name for name in received if name not in expected]
    wrong = [name for name in expected if name in received
             and not math.isclose(expected[name], received[name], rel_tol=rtol, abs_tol=atol)]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        listed = ", ".join(f"{name} (expected {expected[name]:.7g}, received {received[name]:.7g})"
                           for name in wrong[:show])
        parts.append(f"{len(wrong)} of {len(expected)} tensor(s) differ: {listed}" + (", ..." if len(wrong) > show
                                                                                       else ""))
    if missing:
        parts.append(f"{len(missing)} missing: {', '.join(missing[:show])}" + (", ..." if len(missing) > show else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:show])}"
                     + (", ..." if len(unexpected) > show else ""))
    raise ValueError(f"weight checksum mismatch (rtol={rtol}): " + "; ".join(parts))


__all__ = ["DEFAULT_BUCKET_BYTES", "Pair", "PushStats", "checksums", "export", "gather", "jax_dtype",
           "model_params", "plan_buckets", "push_weights", "tensor_checksum", "to_torch", "verify_checksums"]
