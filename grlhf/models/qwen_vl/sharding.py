"""Sharding: a ``('data', 'fsdp', 'tp')`` mesh, partition rules for every parameter, and a model built
already sharded.

Rules (first match wins): the embedding and ``lm_head`` split the vocabulary over ``tp``; attention heads
and MLP hidden units over ``tp`` (column-parallel in, row-parallel out); the other matrix dimension
over ``fsdp``; norms replicated. A dimension the mesh axis does not divide stays unsplit on that axis.
``constrain`` applies activation constraints only under an active mesh, so the same code runs unsharded;
``shard_inputs`` places a batch over ``('data', 'fsdp')``. The mesh's axes are ``Auto``: XLA propagates
the parameters' shardings through the model code.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from grlhf.models.qwen_vl.hf_params import path_to_str

MESH_AXES = ("data", "fsdp", "tp")
BATCH = ("data", "fsdp")  # activations' batch dimension

COLUMN = P("fsdp", "tp")  # kernel (in, out): outputs split over tp
ROW = P("tp", "fsdp")  # kernel (in, out): inputs split over tp
TP_BIAS = P("tp")

PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r".*embed_tokens\.embedding", P("tp", "fsdp")),  # (V, H)
    (r"(.*\.)?lm_head\.kernel", P("fsdp", "tp")),  # (H, V)
    (r".*self_attn\.[qkv]_proj\.kernel", COLUMN),
    (r".*self_attn\.[qkv]_proj\.bias", TP_BIAS),
    (r".*self_attn\.o_proj\.kernel", ROW),
    (r".*attn\.qkv\.kernel", COLUMN),
    (r".*attn\.qkv\.bias", TP_BIAS),
    (r".*attn\.proj\.kernel", ROW),
    (r".*mlp\.(gate_proj|up_proj|fc1|0)\.kernel", COLUMN),
    (r".*mlp\.(gate_proj|up_proj|fc1|0)\.bias", TP_BIAS),
    (r".*mlp\.(down_proj|fc2|2)\.kernel", ROW),
    (r".*\.kernel", P("fsdp", None)),  # patch embedding and anything else 2-D
    (r".*", P()),  # norms and remaining biases: replicated
)


def make_mesh(data: int = 1, fsdp: int = -1, tp: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A mesh over ``devices`` (default: all); ``-1`` takes the devices left over."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tp]
    known = 1
    for size in sizes:
        known *= size if size > 0 else 1
    sizes = [size if size > 0 else len(devices) // known for size in sizes]
    if sizes[0] * sizes[1] * sizes[2] != len(devices):
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tp={sizes[2]} does not use the "
                         f"{len(devices)} devices")
    # Auto axes: XLA propagates shardings through the model code (jax's default, Explicit, would demand
    # an explicit out_sharding on every ambiguous gather and contraction, e.g. the embedding lookup).
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def fit_spec(spec: P, shape: Sequence[int], mesh) -> P:
    """``spec`` padded to ``len(shape)`` with each entry cut to the longest prefix of its mesh axes whose
    product divides the dimension (``P(('data', 'fsdp'))`` on a batch of 2 over a 2 x 2 mesh gives
    ``P('data')``); ``P.UNCONSTRAINED`` entries are kept. ``mesh`` may be abstract."""
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    if len(entries) > len(shape):
        raise ValueError(f"partition spec {spec} has more entries than the shape {tuple(shape)}")
    fitted = []
    for entry, dim in zip(entries, shape):
        if entry is P.UNCONSTRAINED:
            fitted.append(entry)
            continue
        kept, size = [], 1
        for axis in _axes(entry):
            if dim % (size * mesh.shape[axis]):
                break
            kept.append(axis)
            size *= mesh.shape[axis]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*fitted)


def partition_spec(path: str, shape: Sequence[int], mesh: Mesh) -> P:
    """The spec for one parameter (first matching rule), with axes that do not divide its dimension dropped."""
    for pattern, spec in PARAM_RULES:
        if re.fullmatch(pattern, path):
            return fit_spec(spec[: len(shape)], shape, mesh)
    return P()


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedShardings for every leaf of a (possibly abstract) model state.

    The result has the state's own tree structure (each Variable holding its NamedSharding, as
    ``nnx.get_named_sharding`` does), so it zips with the state in ``jax.tree.map`` and serves as
    ``jit``'s ``out_shardings`` and as orbax restore targets.
    """
    def sharding_of(path, leaf):
        named = NamedSharding(mesh, partition_spec(path_to_str(path), leaf.shape, mesh))
        return leaf.replace(named) if isinstance(leaf, nnx.Variable) else named

    return nnx.map_state(sharding_of, state)


def place_state(module: nnx.Module, mesh: Mesh, *filters) -> None:
    """Moves ``module``'s state (or the part ``filters`` select) onto ``mesh`` in its rules' shardings."""
    state = nnx.state(module, *filters)
    nnx.update(module, jax.device_put(state, state_shardings(state, mesh)))


def batch_sharding(mesh: Mesh, shape: Sequence[int], axis: int = 0) -> NamedSharding:
    """Dimension ``axis`` over ``BATCH`` (as far as it divides), the rest replicated."""
    spec = [None] * len(shape)
    spec[axis] = BATCH
    return NamedSharding(mesh, fit_spec(P(*spec), shape, mesh))


def put_batch(x, mesh: Mesh, axis: int = 0) -> jax.Array:
    """``x`` placed on ``mesh``, its dimension ``axis`` split over the batch axes (see ``batch_sharding``)."""
    return jax.device_put(x, batch_sharding(mesh, np.shape(x), axis))


def shard_inputs(inputs, mesh: Mesh):
    """A ``ModelInputs`` placed on ``mesh``: ``input_ids`` / ``attention_mask`` ``[B, L]`` and
    ``position_ids`` ``[3, B, L]`` split over the batch; the vision inputs (patches of the whole batch,
    not split by example) replicated."""
    input_ids, attention_mask, position_ids, vision, token_types = inputs
    put = lambda x, axis: put_batch(x, mesh, axis)  # noqa: E731
    replicated = NamedSharding(mesh, P())
    vision = None if vision is None else type(vision)(*(
        None if x is None else jax.device_put(x, replicated) for x in vision))
    token_types = None if token_types is None else put(token_types, 0)
    return type(inputs)(put(input_ids, 0), put(attention_mask, 0), put(position_ids, 1), vision, token_types)


def to_host(x) -> np.ndarray:
    """A (global) array's full value as numpy on every process: an all-gather when it spans processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def constrain(x: jax.Array, spec: P) -> jax.Array:
    """``with_sharding_constraint(x, spec)`` under an active mesh (``jax.set_mesh``), with axes that do not
    divide their dimension dropped (see ``fit_spec``); the identity otherwise, so model code that calls
    it runs unchanged without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(spec, x.shape, mesh))


def constrain_state(state: nnx.State) -> nnx.State:
    """Every leaf of a parameter-shaped state (gradients, optimizer moments: paths that end in a
    parameter's path) constrained to that parameter's rule under an active mesh; identity otherwise.

    Without it XLA picks the gradients' shardings freely, and may return some (the embedding's, say)
    fully replicated.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return state

    def constrain_leaf(path, leaf):
        value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        value = jax.lax.with_sharding_constraint(value, partition_spec(path_to_str(path), value.shape, mesh))
        return leaf.replace(value) if isinstance(leaf, nnx.Variable) else value

    return nnx.map_state(constrain_leaf, state)


def create_sharded(build: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Build ``build()`` (an NNX model constructor) with every parameter created in its shard.

    Shapes come from ``nnx.eval_shape`` (nothing allocated); the initialiser then runs under ``jit`` with
    ``out_shardings`` (threefry is partitionable, so each device generates only its own slice), so no
    device ever holds a full unsharded copy. ``build`` must create its own ``nnx.Rngs`` (it is traced
    twice); the values equal an unsharded ``build()``.
    """
    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
    shardings = state_shardings(abstract_state, mesh)

    def init():
        return nnx.state(build())

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
