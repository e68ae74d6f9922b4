"""The cuDNN flash-attention path: how each call site's mask becomes the fused kernel's arguments.

``jax.nn.dot_product_attention(implementation="cudnn")`` takes masking in two forms. A boolean ``mask``
(or a ``bias``) is turned into an additive bias that must have the full query and key lengths
(``[B, N or 1, T, S]``; a broadcast ``[B, 1, 1, S]`` fails its layout check, "Bias must have same seq
length as QKV"), is read by the kernel at every step and, in training, gets a gradient of its own. The
structured form costs nothing: ``is_causal`` (query ``i`` sees keys ``<= i``) and per-row
``query_seq_lengths`` / ``key_value_seq_lengths`` (the real tokens are each row's first ``n`` slots).

So ``flash_call`` prepares, per call site:

* **one contiguous run of real tokens per row** (``Mask.run``; the queries' own keys): right-padded
  training rows, left-padded prompts in a training forward or a prefill at slot 0, Qwen2-VL's per-image
  segments and Qwen2.5-VL's windows (packed ``[segments, Lmax]``, valid slots first). Rows whose run does
  not start at slot 0 are rolled left so that it does (a gather of q, k, v, and of the output back), then
  ``is_causal`` (text) and the run length as both sequence lengths. No mask is materialised.
* **anything else** (``Mask.run`` is None): a decode step's single query over the KV cache, or a suffix
  prefilled after a shared prefix (padding between them). ``allowed`` is expanded to ``[B, 1, T, S]`` and
  passed as the mask: for a decode step (``T = 1``) that is the mask as it is; for a suffix prefill it is
  ``B·T·S`` booleans, one head's worth, over the slots up to the suffix's last (``Mask.keys``).

Outputs at padded query slots are unspecified (the kernel writes zeros there); every caller drops them.
A run of length 0 (an all-padding row or segment) is given length 1 so the kernel never sees an empty
sequence. ``flash_attention(..., implementation="xla")`` runs the same arguments through JAX's reference
formula, which is how the CPU tests check this preparation against ``layers.attention``'s XLA formula.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.nn import dot_product_attention  # module attribute: tests record the calls through it


@dataclasses.dataclass(frozen=True)
class Mask:
    """Which keys each query sees, in the forms both attention implementations want.

    ``allowed``: bool, broadcastable to ``[B, heads, L, S]``, the XLA formula's mask (and the cuDNN
    fallback's). ``run``: ``(start, length)``, ``[B]`` int32 each (``start`` None: 0), when the keys are
    the queries' own ``L`` slots and each row's real tokens are the slots ``start .. start + length - 1``;
    ``causal`` then says whether query ``i`` sees only keys ``<= i``. ``keys``: a static count of leading
    key slots the kernel reads (a prefill at a static cache slot needs no slot past its last query); None:
    all. Built per call, never passed through a transformation (``causal`` and ``keys`` are static).
    """

    allowed: jax.Array
    run: Optional[tuple[Optional[jax.Array], jax.Array]] = None
    causal: bool = False
    keys: Optional[int] = None


def run_of(key_mask: jax.Array, causal: bool, keys: Optional[int] = None,
           allowed: Optional[jax.Array] = None) -> Mask:
    """The ``Mask`` of rows whose real tokens (``key_mask [B, L]``) are one contiguous run, as the batches
    grlhf builds are (right-padded rows, left-padded prompts); ``allowed`` is the XLA formula's mask."""
    real = key_mask.astype(bool)
    start = jnp.argmax(real, axis=-1).astype(jnp.int32)  # first real slot (0 in an all-padding row)
    length = jnp.sum(real, axis=-1, dtype=jnp.int32)
    return Mask(allowed=real[:, None, None, :] if allowed is None else allowed, run=(start, length),
                causal=causal, keys=keys)


class FlashCall(NamedTuple):
    """The arguments of one ``jax.nn.dot_product_attention`` call, and how to undo the row roll."""

    query: jax.Array  # [B, T, N, H]
    key: jax.Array  # [B, S, K, H]
    value: jax.Array  # [B, S, K, H]
    mask: Optional[jax.Array]  # [B, 1 or N, T, S] bool, the full shape the kernel needs
    query_seq_lengths: Optional[jax.Array]  # [B] int32
    key_value_seq_lengths: Optional[jax.Array]  # [B] int32
    is_causal: bool
    shift: Optional[jax.Array]  # [B] int32: rows were rolled left by this; the output is rolled back


def roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """``x [B, L, ...]`` with row ``b`` rolled left by ``shift[b]`` (slot ``j`` takes slot ``j + shift``)."""
    length = x.shape[1]
    index = (jnp.arange(length, dtype=jnp.int32)[None, :] + shift[:, None]) % length
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def flash_call(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask) -> FlashCall:
    """The kernel's arguments for ``q [B, L, nh, hd]``, ``k, v [B, S, nkv, hd]`` under ``mask`` (see the
    module docstring for the form chosen at each call site)."""
    if mask.keys is not None:
        k, v = k[:, :mask.keys], v[:, :mask.keys]
    batch, length = q.shape[:2]
    if mask.run is None:
        allowed = mask.allowed[..., :k.shape[1]]
        allowed = jnp.broadcast_to(allowed, (batch, allowed.shape[1], length, k.shape[1]))
        return FlashCall(q, k, v, allowed, None, None, False, None)
    if k.shape[1] != length:
        raise ValueError(f"a run mask attends the queries' own keys: got {length} queries and {k.shape[1]} keys")
    start, count = mask.run
    count = jnp.maximum(count, 1).astype(jnp.int32)
    if start is not None:
        q, k, v = (roll_rows(t, start) for t in (q, k, v))
    return FlashCall(q, k, v, None, count, count, mask.causal, start)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask, *,
                    implementation: str = "cudnn") -> jax.Array:
    """Attention through ``jax.nn.dot_product_attention`` with ``flash_call``'s arguments: the cuDNN flash
    kernel (GPU; bf16 / fp16), or with ``implementation="xla"`` JAX's formula on the same arguments."""
    call = flash_call(q, k, v, mask)
    out = dot_product_attention(call.query, call.key, call.value, mask=call.mask, is_causal=call.is_causal,
                                query_seq_lengths=call.query_seq_lengths,
                                key_value_seq_lengths=call.key_value_seq_lengths, implementation=implementation)
    return out if call.shift is None else roll_rows(out, -call.shift)


def resolve_attention_impl(impl: str, dtype) -> str:
    """``'auto'``: ``'cudnn'`` on a GPU backend with a bf16 / fp16 compute dtype (the kernel's), else
    ``'xla'``; other values as they are."""
    if impl != "auto":
        return impl
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else "xla"
