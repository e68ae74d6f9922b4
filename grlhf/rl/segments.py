"""Segment helpers: groups given by arbitrary integer ids, usable under ``jax.jit``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Groups(NamedTuple):
    """Dense group indices for a batch whose groups are named by arbitrary integer ids."""

    index: jax.Array  # [B] int32 in [0, B): the dense id of each row's group
    count: jax.Array  # [B] float32: the size of each row's group
    first: jax.Array  # [B] int32: the position of the first row of each row's group
    num_segments: int  # static upper bound on the number of groups (= B)


def groups_from_ids(group_ids: jax.Array) -> Groups:
    """Map arbitrary integer ids to dense segment indices (static shapes, so it jits)."""
    group_ids = jnp.asarray(group_ids).reshape(-1)
    size = group_ids.shape[0]
    _, index = jnp.unique(group_ids, return_inverse=True, size=size, fill_value=0)
    index = index.reshape(-1).astype(jnp.int32)
    ones = jnp.ones((size,), jnp.float32)
    count = jax.ops.segment_sum(ones, index, num_segments=size)[index]
    positions = jnp.arange(size, dtype=jnp.int32)
    first = jax.ops.segment_min(positions, index, num_segments=size)[index]
    return Groups(index=index, count=count, first=first, num_segments=size)


def group_sum(values: jax.Array, groups: Groups) -> jax.Array:
    """Sum of ``values`` over each row's group, broadcast back to rows."""
    total = jax.ops.segment_sum(values, groups.index, num_segments=groups.num_segments)
    return total[groups.index]
