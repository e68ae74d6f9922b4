"""Rematerialisation (gradient checkpointing) of each decoder layer and vision block, by name.

``model.remat`` names what a layer keeps for the backward pass; the rest is recomputed there:

- ``none``: everything (fastest, most memory);
- ``full``: only the layer's input (``jax.checkpoint_policies.nothing_saveable``: one forward again);
- ``dots``: the outputs of every matmul (``dots_saveable``: elementwise ops, norms and softmax are recomputed);
- ``dots_no_batch``: the outputs of matmuls without batch dimensions, i.e. the projections and the MLP, not
  the attention scores (``dots_with_no_batch_dims_saveable``; what MaxText calls ``minimal``).

A bool is read as before: ``true`` is ``full``, ``false`` is ``none``.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
from flax import nnx

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
             "dots": jax.checkpoint_policies.dots_saveable,
             "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_name(remat: Union[str, bool, None]) -> str:
    """The policy's name for ``remat`` (a name, or a bool: true -> full); an error naming the choices."""
    if remat is None or isinstance(remat, bool):
        return "full" if remat else "none"
    name = str(remat).lower()
    if name in ("true", "false"):
        return "full" if name == "true" else "none"
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; expected one of {', '.join(REMAT_POLICIES)}")
    return name


def checkpointed(fn: Callable, remat: Union[str, bool, None]) -> Callable:
    """``fn`` under ``nnx.remat`` with the named policy (``none``: ``fn`` itself)."""
    name = remat_name(remat)
    if name == "none":
        return fn
    policy: Optional[Callable[..., bool]] = _POLICIES[name]
    return nnx.remat(fn, policy=policy)


__all__ = ["REMAT_POLICIES", "checkpointed", "remat_name"]
