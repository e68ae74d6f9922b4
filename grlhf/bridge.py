"""The array bridge: a Qwen-VL model's NNX parameters -> ``(hf_name, torch.Tensor)`` pairs for a PyTorch engine
(vLLM's ``load_weights`` / ``reload_weights``), streamed in buckets of bounded size.

Names and layouts come from ``hf_params`` -- the table ``save_pretrained`` uses -- so the engine receives exactly
the tensors of an exported checkpoint: hub keys (``model.layers.N...``, ``visual.blocks.N...``, ``lm_head.weight``),
PyTorch layout (Linear ``[out, in]``, the 5-D Conv3d patch embedding), Qwen2-VL's vision ``attn.qkv`` fused as
HF ships it, the LM's q/k/v and gate/up separate (vLLM fuses them itself). With ``tie_word_embeddings`` the model
has no ``lm_head`` and, like the exported checkpoint, no ``lm_head.weight`` is sent. (vLLM ties its head to
``model.embed_tokens.weight``, but its CPU backend keeps a packed copy of the head that a reload refreshes only
under the name ``lm_head.weight``: ``rollout.vllm_engine`` sends the embedding under both names.)

Transfer, one bucket at a time (``push_weights`` and ``export`` alike): the bucket's arrays that need work (a
cast to the engine dtype, the HF-layout transpose/reshape, or a gather of a sharded array) go through ONE jitted
call, ``_to_hf_bucket``, that casts, transposes and (for arrays sharded over a mesh) all-gathers them all at once
and returns contiguous buffers, compiled once per bucket signature (a second push of the same model reuses it);
nothing is synchronised per tensor. Each result is handed over with ``torch.from_dlpack``, zero-copy (on GPU,
torch's stream waits on JAX's ready event: no host round trip). An untransformed parameter already in the engine
dtype on the target device (norms, biases, the embedding) skips the call and is a view of the trainer's own
buffer. Sharded arrays come out replicated over their mesh and the copy on the target device is used (arrays
spanning several hosts are all-gathered the same way, every process taking part); arrays on a single other device
are copied onto it. bfloat16 goes through DLPack as is; off CPU/GPU (TPU), or with ``via_host``, each bucket is
fetched to host memory in one transfer.

Lifetime: ``push_weights`` calls ``consume(bucket)`` and drops its references (and empties the list) when it
returns, so no view outlives the call and a later donating train step can reuse the buffers. ``consume``
must copy what it keeps and must never write into the tensors: they may alias the trainer's parameters.
"""

from __future__ import annotations

import functools
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


def _host_tensor(host: np.ndarray) -> torch.Tensor:
    host = np.array(host, order="C", copy=True)  # writable: torch refuses read-only buffers
    if host.dtype == ml_dtypes.bfloat16:  # torch.from_numpy has no bfloat16: bit-cast through uint16
        return torch.from_numpy(host.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(host)


def to_torch(array: jax.Array, *, via_host: bool = False) -> torch.Tensor:
    """A single-device JAX array as a torch tensor: a zero-copy DLPack view on CPU/GPU, else (or with
    ``via_host``) a host copy (bfloat16 bit-cast through uint16, which ``torch.from_numpy`` needs).
    No host synchronisation on GPU: DLPack makes torch's current stream wait until the array is ready."""
    (device,) = array.devices()
    if not via_host and device.platform in DLPACK_PLATFORMS:
        if device.platform == "cpu":
            array.block_until_ready()
        return torch.from_dlpack(array)
    return _host_tensor(jax.device_get(array))


def _cast(array: jax.Array, dtype: Optional[Any]) -> jax.Array:
    return array if dtype is None or array.dtype == dtype else array.astype(dtype)


_hf_key = functools.lru_cache(maxsize=None)(hf_params.hf_key)  # the regex table, once per parameter path
Layout = tuple[hf_params.Transform, Optional[tuple[int, ...]]]  # (transform, the Conv3d's HF shape)


@functools.partial(jax.jit, static_argnames=("layouts", "dtype", "mesh"))
def _to_hf_bucket(arrays: tuple[jax.Array, ...], layouts: tuple[Layout, ...], dtype: Optional[np.dtype],
                  mesh: Optional[jax.sharding.Mesh]) -> tuple[jax.Array, ...]:
    """One bucket's arrays cast to ``dtype`` and put in HF layout, in one compiled call (the bridge's only
    computation). With ``mesh`` (the inputs are sharded over it) the results are replicated over the mesh: XLA
    all-gathers them, and every device, the target included, holds a whole copy."""
    out = tuple(hf_params.to_hf(_cast(array, dtype), transform, shape)
                for array, (transform, shape) in zip(arrays, layouts))
    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        out = tuple(jax.lax.with_sharding_constraint(array, replicated) for array in out)
    return out


def _on(array: jax.Array, device: Optional[jax.Device]) -> jax.Array:
    """A fully replicated ``array`` (a parameter, or a result of ``_to_hf_bucket``) on one device, as ``gather``
    places it: as is on its own single device (``device`` None or that one), else its copy on ``device`` (default:
    this process's first local device; any local copy when ``device`` is None), copied there if it has none."""
    if len(array.devices()) == 1 and (device is None or array.devices() == {device}):
        return array
    want = device or jax.local_devices()[0]
    shards = [shard for shard in array.addressable_shards if shard.device == want] or array.addressable_shards
    single = shards[0].data
    return single if device is None or single.devices() == {device} else jax.device_put(single, device)


def _convert(params: Sequence[tuple[str, jax.Array]], config, target: Optional[Any], device: Optional[jax.Device],
             via_host: bool) -> list[Pair]:
    """One bucket of ``(nnx_path, array)`` -> ``(hf_name, tensor)`` pairs in the same order: one
    ``_to_hf_bucket`` call per device group (one in practice: a model lives on one device or one mesh)."""
    dtype = None if target is None else np.dtype(target)
    keys: list[str] = []
    ready: dict[int, jax.Array] = {}  # index -> its single-device array (see ``_on``)
    groups: dict[Any, list[tuple[int, jax.Array, Layout]]] = {}  # (mesh or device) -> work
    for index, (path, array) in enumerate(params):
        key, transform = _hf_key(path)
        keys.append(key)
        shape = hf_params.conv3d_shape(config) if transform is hf_params.Transform.CONV3D else None
        if transform is hf_params.Transform.NONE and (dtype is None or array.dtype == dtype) \
                and array.is_fully_replicated:
            ready[index] = _on(array, device)  # nothing to do: a view of the trainer's buffer on ``device``
            continue
        sharding = array.sharding
        if len(array.devices()) == 1:
            group = next(iter(array.devices()))
        elif isinstance(sharding, jax.sharding.NamedSharding):
            group = sharding.mesh
        else:  # another kind of multi-device sharding: gather it first, as a single-device input
            array = gather(array, device)
            group = device
        groups.setdefault(group, []).append((index, array, (transform, shape)))
    for group, work in groups.items():
        mesh = group if isinstance(group, jax.sharding.Mesh) else None
        outputs = _to_hf_bucket(tuple(array for _, array, _ in work), layouts=tuple(layout for _, _, layout in work),
                                dtype=dtype, mesh=mesh)
        for (index, _, _), output in zip(work, outputs):
            ready[index] = _on(output, device)
        del outputs
    arrays = [ready.pop(index) for index in range(len(keys))]
    platforms = {next(iter(array.devices())).platform for array in arrays}
    if via_host or not platforms <= set(DLPACK_PLATFORMS):
        return [(key, _host_tensor(host)) for key, host in zip(keys, jax.device_get(arrays))]  # one transfer
    if "cpu" in platforms:
        jax.block_until_ready(arrays)  # one wait per bucket (on GPU torch's stream waits, see ``to_torch``)
    return [(key, torch.from_dlpack(array)) for key, array in zip(keys, arrays)]


def _nbytes(array: jax.Array, dtype: Optional[Any]) -> int:
    return math.prod(array.shape) * np.dtype(dtype or array.dtype).itemsize


def export(params: Iterable[tuple[str, jax.Array]], config, *, dtype: Optional[torch.dtype] = None,
           device: Optional[jax.Device] = None, via_host: bool = False,
           bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[Pair]:
    """``(hf_name, tensor)`` for ``(nnx_path, array)`` pairs: cast, gathered, HF layout (``hf_params``), converted
    in buckets of consecutive pairs of at most ``bucket_bytes`` (a larger tensor goes alone), one compiled call
    each (see the module docstring).

    The lazy form under ``push_weights`` (e.g. for ``reload_weights(weights_iterator=...)``): the tensors may be
    views of JAX buffers, so drop them before the next donating step and never write into them. At most one
    bucket's tensors are held here at a time.
    """
    target = jax_dtype(dtype)
    for bucket in _buckets(list(params), target, bucket_bytes):  # plan_buckets checks bucket_bytes
        yield from _drain(bucket, config, target, device, via_host)


def _buckets(flat: list[tuple[str, jax.Array]], target, bucket_bytes: int) -> Iterator[list[tuple[str, jax.Array]]]:
    """``flat`` cut into ``plan_buckets``' consecutive buckets (sizes in the engine dtype ``target``)."""
    start = 0
    for planned in plan_buckets([(path, _nbytes(array, target)) for path, array in flat], bucket_bytes):
        yield flat[start:start + len(planned)]
        start += len(planned)


def _drain(pending: list[tuple[str, jax.Array]], config, target, device, via_host) -> Iterator[Pair]:
    """Convert ``pending`` (emptied) and yield its pairs, keeping no reference to what was yielded."""
    bucket = _convert(pending, config, target, device, via_host)
    pending.clear()
    bucket.reverse()
    while bucket:
        yield bucket.pop()


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


def push_weights(model, consume: Consume, *, dtype: Optional[torch.dtype] = None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, device: Optional[jax.Device] = None,
                 via_host: bool = False) -> PushStats:
    """Call ``consume(bucket)`` for each bucket of ``(hf_name, tensor)`` pairs covering every parameter once.

    ``dtype``: the engine's (torch.float32 / bfloat16 / float16; None keeps the stored one). ``bucket_bytes``
    bounds each bucket's total size. Tensors live on ``device`` (see ``gather``). Each bucket is converted by one
    compiled call just before ``consume`` and released after it: ``consume`` must copy what it keeps and not
    write into the tensors (they may be views of the model's own buffers).
    """
    target = jax_dtype(dtype)
    flat = [(path, var.get_value()) for path, var in _flat_params(model)]
    sent = buckets = 0
    for params in _buckets(flat, target, bucket_bytes):
        bucket = _convert(params, model.config, target, device, via_host)
        del params
        buckets += 1
        sent += sum(tensor.numel() * tensor.element_size() for _, tensor in bucket)
        try:
            consume(bucket)
        finally:
            bucket.clear()  # no view outlives the call, even if consume kept the list
            del bucket
    return PushStats(tensors=len(flat), bytes=sent, buckets=buckets)


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
