"""Building blocks shared by the vision tower and the decoder, numerically as transformers does them.

Norms upcast to float32 and cast back the way HF does (RMSNorm casts *before* the weight multiply);
attention logits and softmax are float32; rotary embeddings are applied as ``x cos + rotate_half(x) sin``.
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from grlhf.models.qwen_vl.flash import Mask, flash_attention

Dtype = jnp.dtype
# attention(impl=...): the eager formula (its backward written out) | the cuDNN flash kernel | cudnn on GPU in
# bf16/fp16, else xla | the eager formula differentiated by JAX (xla's values to float32 rounding, its older
# rounding: a toy whose outcome follows the rounding can keep it) ("auto" is resolved once, by the model's
# constructor: flash.resolve_attention_impl). The impl also decides the MLPs' and projections' backward
# (projections.written_backward: written out unless xla_autodiff).
ATTENTION_IMPLS = ("xla", "cudnn", "auto", "xla_autodiff")


class RMSNorm(nnx.Module):
    """HF Qwen2 RMSNorm: ``w * (x32 * rsqrt(mean(x32^2) + eps)).astype(x.dtype)``."""

    def __init__(self, dim: int, eps: float, *, param_dtype: Dtype = jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch LayerNorm: two-pass variance in float32, affine in float32, cast to the input dtype."""

    def __init__(self, dim: int, eps: float, *, param_dtype: Dtype = jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def linear(in_dim: int, out_dim: int, *, bias: bool, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype,
           precision: Optional[jax.lax.Precision] = None) -> nnx.Linear:
    """A Linear with HF's initialisation scale (normal, std 0.02; zero bias)."""
    return nnx.Linear(in_dim, out_dim, use_bias=bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      kernel_init=nnx.initializers.normal(0.02), bias_init=nnx.initializers.zeros, rngs=rngs)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_exact(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x cos + rotate_half(x) sin``; cos/sin broadcast over the heads axis (``[..., L, 1, hd]``)."""
    return x * cos + rotate_half(x) * sin


def uses_cache_layout(impl: str) -> bool:
    """Whether ``impl``'s KV cache is in ``attention``'s ``cache_layout`` (keys ``[B, nkv, hd, S]``, values
    ``[B, nkv, S, hd]``, which the XLA formula's matmuls read in place), not ``[B, S, nkv, hd]`` (which the
    cuDNN kernel reads as it is)."""
    return impl != "cudnn"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Union[jax.Array, Mask], *, impl: str = "xla",
              cache_layout: bool = False) -> jax.Array:
    """Scaled dot-product attention with grouped key/value heads.

    ``q [B, L, nh, hd]``, ``k, v [B, S, nkv, hd]``, or with ``cache_layout`` the KV cache's ``k [B, nkv,
    hd, S]``, ``v [B, nkv, S, hd]``; ``mask`` a ``flash.Mask`` or its ``allowed`` alone (bool,
    broadcastable to ``[B, nh, L, S]``). ``impl='xla'`` is the eager formula (float32 logits and softmax,
    as transformers' eager attention) on ``allowed``, with its backward written out (``_attend_bwd``;
    ``'xla_autodiff'``: differentiated by JAX); ``impl='cudnn'`` is the cuDNN flash kernel (GPU only)
    with the arguments ``flash.flash_call`` prepares from the mask (outputs at padded queries unspecified).
    """
    mask = mask if isinstance(mask, Mask) else Mask(allowed=mask)
    if impl == "cudnn":
        if cache_layout:
            raise ValueError("cache_layout is the XLA formula's KV-cache layout; the cuDNN kernel reads k, v as "
                             "[B, S, nkv, hd]")
        return flash_attention(q, k, v, mask)
    if impl not in ("xla", "xla_autodiff"):
        named = tuple(i for i in ATTENTION_IMPLS if i != "auto")
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {named} "
                         "('auto' is resolved by the model's constructor)")
    allowed = mask.allowed
    batch, length, heads, dim = q.shape
    kv_heads, keys = (k.shape[1], k.shape[3]) if cache_layout else (k.shape[2], k.shape[1])
    groups = heads // kv_heads
    # [B, kv, g*L, D]: one matmul per kv head over all its query heads, a layout XLA:CPU runs without
    # the transposing copies that a [B, L, kv, g, D] einsum costs (bench/model_step.py). Keys and values
    # in [B, S, kv, D] still cost a transposing copy each per call, which a KV cache read at every decode
    # step avoids by its layout (see ``TextModel.init_cache``).
    q = q.reshape(batch, length, kv_heads, groups, dim).transpose(0, 2, 3, 1, 4).reshape(batch, kv_heads, -1, dim)
    if allowed.shape[1] == 1:
        allowed = allowed[:, :, None]  # [B, 1, 1, L, S]
    else:
        allowed = allowed.reshape(allowed.shape[0], kv_heads, groups, length, keys)
    if cache_layout or impl == "xla_autodiff":  # decoding (no backward), or JAX's autodiff asked for
        out = _formula(q, k, v, allowed, groups, cache_layout)[0]
    else:
        out = _attend(q, k, v, allowed, groups)
    return out.reshape(batch, kv_heads, groups, length, dim).transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, dim)


def _grouped(x: jax.Array, groups: int) -> jax.Array:
    """``[B, kv, g*L, S]`` -> ``[B, kv, g, L, S]``, where a mask ``[B, 1 or kv, g or 1, L or 1, S]`` applies."""
    return x.reshape(x.shape[:2] + (groups, x.shape[2] // groups, x.shape[3]))


def _softmax_probs(q: jax.Array, k: jax.Array, allowed: jax.Array, groups: int, k_spec: str) -> jax.Array:
    """float32 ``softmax(q k^T / sqrt(d))`` over the allowed keys: ``q [B, kv, g*L, D]``, ``allowed``
    broadcastable to ``[B, kv, g, L, S]`` -> ``[B, kv, g*L, S]``."""
    scores = jnp.einsum(f"bkmd,{k_spec}->bkms", q, k, preferred_element_type=jnp.float32) * (q.shape[-1]**-0.5)
    scores = jnp.where(allowed, _grouped(scores, groups), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1).reshape(scores.shape[:2] + (-1, scores.shape[-1]))


def _formula(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, groups: int, cache_layout: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    """``(softmax(q k^T / sqrt(d)) v, the float32 probabilities)`` for ``q [B, kv, g*L, D]`` and ``k, v [B, S, kv,
    D]`` or, with ``cache_layout``, the KV cache's ``k [B, kv, D, S]``, ``v [B, kv, S, D]``."""
    k_spec, v_spec = ("bkds", "bksd") if cache_layout else ("bskd", "bskd")
    probs = _softmax_probs(q, k, allowed, groups, k_spec)
    return jnp.einsum(f"bkms,{v_spec}->bkmd", probs.astype(v.dtype), v), probs


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, groups: int) -> jax.Array:
    """``softmax(q k^T / sqrt(d)) v`` for ``q [B, kv, g*L, D]``, ``k, v [B, S, kv, D]``, with the backward
    pass written out (``_attend_bwd``)."""
    return _attend_fwd(q, k, v, allowed, groups)[0]


def _attend_fwd(q, k, v, allowed, groups):
    out, probs = _formula(q, k, v, allowed, groups)
    return out, (q, k, v, allowed, probs, out)


def _attend_bwd(groups, residuals, d_out):
    """The softmax's input gradient as flash attention takes it: ``P * (dP - rowsum(dO * O))``, a ``[.., D]``
    reduction where autodiff's ``rowsum(dP * P)`` reduces over the ``S`` keys, in one pass over ``[.., S]``
    (masked keys get 0, as ``where`` gives them)."""
    q, k, v, allowed, probs, out = residuals
    d_probs = jnp.einsum("bkmd,bskd->bkms", d_out, v, preferred_element_type=jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = jnp.where(allowed, _grouped(probs * (d_probs - delta) * (q.shape[-1]**-0.5), groups), 0.0)
    d_scores = d_scores.reshape(probs.shape)
    d_q = jnp.einsum("bkms,bskd->bkmd", d_scores.astype(q.dtype), k)
    d_k = jnp.einsum("bkms,bkmd->bskd", d_scores.astype(q.dtype), q)
    d_v = jnp.einsum("bkms,bkmd->bskd", probs.astype(v.dtype), d_out)
    return d_q, d_k, d_v, None


_attend.defvjp(_attend_fwd, _attend_bwd)
