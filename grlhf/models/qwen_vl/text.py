"""The Qwen2 decoder with grouped-query attention and multimodal rotary embeddings (M-RoPE)."""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from grlhf.models.qwen_vl.config import TextConfig
from grlhf.models.qwen_vl.flash import Mask, run_of
from grlhf.models.qwen_vl.rope import inv_freq
from grlhf.models.qwen_vl.sharding import BATCH, constrain
from grlhf.models.qwen_vl.layers import RMSNorm, apply_rotary, attention, linear, uses_cache_layout
from grlhf.models.qwen_vl.projections import dense, swiglu, written_backward
from grlhf.models.qwen_vl.remat import checkpointed, remat_name


LayerCache = tuple[jax.Array, jax.Array]  # (keys, values); layouts in TextModel.init_cache
KVCache = tuple[LayerCache, ...]  # one per layer
Index = Union[int, jax.Array]  # a cache slot (traced in a decode loop)
WithCache = tuple[jax.Array, Any]  # (output, the updated cache) of a call given a cache


def causal_mask(key_mask: jax.Array, length: int, cache_index: Index = 0) -> jax.Array:
    """``allowed [B, 1, L, S]`` for ``L`` queries at slots ``cache_index ..``: query ``i`` sees key slot ``s``
    when ``s <= cache_index + i`` (causal) and ``key_mask [B, S]`` marks ``s`` as a real token.

    Without a cache (``cache_index = 0``, ``S = L``) this is the causal mask of the padded sequence.
    """
    causal = jnp.arange(key_mask.shape[1])[None, :] <= cache_index + jnp.arange(length)[:, None]  # [L, S]
    return causal[None, None] & key_mask.astype(bool)[:, None, None, :]


def decoder_mask(key_mask: jax.Array, length: int, cache_index: Index = 0, cached: bool = False) -> Mask:
    """The decoder's ``Mask``: ``causal_mask`` for the XLA formula, and for the flash kernel (flash.py)

    * no cache (a training forward): each row's real tokens are one run (right-padded rows, left-padded
      prompts): ``is_causal`` and sequence lengths;
    * a prefill at static slot 0: the same over the prompt's own slots (keys ``0 .. L - 1``; causality
      hides the rest);
    * a prefill at another static slot (a suffix after a shared prefix): the mask over slots up to the
      last query (padding lies between prefix and suffix);
    * a traced slot (a decode step): the mask ``[B, 1, L, S]`` (``L = 1``: the mask as it is).
    """
    allowed = causal_mask(key_mask, length, cache_index)
    static = isinstance(cache_index, (int, np.integer))
    if not cached:
        return run_of(key_mask, causal=True, allowed=allowed)
    if static and cache_index == 0:
        return run_of(key_mask[:, :length], causal=True, keys=length, allowed=allowed)
    return Mask(allowed=allowed, keys=int(cache_index) + length if static else None)


def mrope_cos_sin(position_ids: jax.Array, cfg: TextConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin ``[B, L, hd]`` from M-RoPE positions ``[3, B, L]`` (rows t, h, w).

    Frequency chunk i of ``mrope_section`` takes its positions from row ``i % 3``; computed in float32
    and cast to the activation dtype, as transformers does.
    """
    frequencies = jnp.asarray(inv_freq(cfg.head_dim, cfg.rope_theta))
    freqs = position_ids.astype(jnp.float32)[..., None] * frequencies  # [3, B, L, hd/2]
    bounds = np.cumsum((0,) + tuple(cfg.mrope_section))
    chunks = [freqs[i % 3, ..., bounds[i]:bounds[i + 1]] for i in range(3)]
    emb = jnp.concatenate(chunks, axis=-1)
    emb = jnp.concatenate([emb, emb], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        hd = cfg.head_dim
        self.q_proj = linear(cfg.hidden_size, cfg.num_attention_heads * hd, bias=True, **kw)
        self.k_proj = linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=True, **kw)
        self.v_proj = linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=True, **kw)
        self.o_proj = linear(cfg.num_attention_heads * hd, cfg.hidden_size, bias=False, **kw)
        self.head_dim = hd

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: Mask, impl: str,
                 cache: Optional[LayerCache] = None, cache_index: Index = 0) -> Union[jax.Array, WithCache]:
        """Self-attention of ``x [B, L, H]`` under ``mask`` (``decoder_mask``; ``allowed [B, 1, L, S]``).

        Without a cache the keys are ``x``'s own (``S = L``). With one (``TextModel.init_cache``'s layout),
        ``x``'s keys and values are written at slots ``cache_index ..`` and attention reads all ``S`` slots
        (the flash kernel: those up to ``mask.keys``).
        Returns ``out [B, L, H]``, and with a cache ``(out, updated cache)``.
        """
        batch, length, _ = x.shape
        split = lambda t: t.reshape(batch, length, -1, self.head_dim)  # noqa: E731
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        written = written_backward(impl)
        q = apply_rotary(split(dense(x, self.q_proj, written)), cos, sin)
        k = apply_rotary(split(dense(x, self.k_proj, written)), cos, sin)
        v = split(dense(x, self.v_proj, written))
        cache_layout = cache is not None and uses_cache_layout(impl)
        if cache is not None:
            if cache_layout:
                k, v = k.transpose(0, 2, 3, 1), v.swapaxes(1, 2)
            key_axis, value_axis = (3, 2) if cache_layout else (1, 1)
            keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, axis=key_axis)
            values = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index,
                                                         axis=value_axis)
            cache = (keys, values)
            k, v = keys.astype(q.dtype), values.astype(q.dtype)
        out = attention(q, k, v, mask, impl=impl, cache_layout=cache_layout)
        out = dense(out.reshape(batch, length, -1), self.o_proj, written)
        return out if cache is None else (out, cache)


class MLP(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.gate_proj = linear(cfg.hidden_size, cfg.intermediate_size, bias=False, **kw)
        self.up_proj = linear(cfg.hidden_size, cfg.intermediate_size, bias=False, **kw)
        self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size, bias=False, **kw)

    def __call__(self, x: jax.Array, written: bool = True) -> jax.Array:
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj, written)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, **kw)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: Mask, impl: str,
                 cache: Optional[LayerCache] = None, cache_index: Index = 0) -> Union[jax.Array, WithCache]:
        """Pre-norm attention and MLP blocks; returns ``x``, and with a cache ``(x, updated cache)`` (see
        ``Attention``)."""
        attended = self.self_attn(self.input_layernorm(x), cos, sin, mask, impl, cache, cache_index)
        out, cache = (attended, None) if cache is None else attended
        x = x + out
        x = x + self.mlp(self.post_attention_layernorm(x), written_backward(impl))
        return x if cache is None else (x, cache)


class TextModel(nnx.Module):
    """``model.language_model``: embeddings, decoder layers, final norm (no head)."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 precision=None, remat: Union[str, bool] = "none", attention_impl: str = "xla"):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.cfg, self.dtype, self.remat, self.attention_impl = cfg, dtype, remat_name(remat), attention_impl
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, **kw) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)

    def __call__(self, inputs_embeds: jax.Array, position_ids: jax.Array, attention_mask: jax.Array,
                 cache: Optional[KVCache] = None, cache_index: Index = 0) -> Union[jax.Array, WithCache]:
        """``inputs_embeds [B, L, H]``, ``position_ids [3, B, L]`` -> final-norm hidden states ``[B, L, H]``.

        Without a cache, ``attention_mask [B, L]`` marks the real tokens. With one (``init_cache``), the
        ``L`` new positions are written at slots ``cache_index .. cache_index + L - 1`` (a prefill or a
        decode step) and ``attention_mask [B, S]`` marks the cache slots that hold real tokens (left
        padding of the prompt is 0). Returns ``hidden``, and with a cache ``(hidden, updated cache)``.
        """
        mask = decoder_mask(attention_mask, inputs_embeds.shape[1], cache_index, cached=cache is not None)
        cos, sin = mrope_cos_sin(position_ids, self.cfg, self.dtype)

        def run_layer(layer, x, layer_cache):
            return layer(x, cos, sin, mask, self.attention_impl, layer_cache, cache_index)

        if cache is None:  # gradients need it; sampling (with a cache) has none to save for
            run_layer = checkpointed(run_layer, self.remat)
        x = inputs_embeds.astype(self.dtype)
        new_cache = []
        for i, layer in enumerate(self.layers):
            if cache is None:
                x = run_layer(layer, x, None)
            else:
                x, layer_cache = run_layer(layer, x, cache[i])
                new_cache.append(layer_cache)
            x = constrain(x, P(BATCH, None, None))
        x = self.norm(x)
        return x if cache is None else (x, tuple(new_cache))

    def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
        """Zeroed keys ``[B, kv_heads, head_dim, max_length]`` and values ``[B, kv_heads, max_length,
        head_dim]`` for every layer: the layouts in which a decode step's two attention matmuls read the
        cache in place, without a transposing copy of it per layer and step (bench/rollout.py). With
        ``attention_impl='cudnn'`` both are ``[B, max_length, kv_heads, head_dim]``, the kernel's layout."""
        heads, dim = self.cfg.num_key_value_heads, self.cfg.head_dim
        dtype = dtype or self.dtype
        if uses_cache_layout(self.attention_impl):
            shapes = [(batch, heads, dim, max_length), (batch, heads, max_length, dim)]
        else:
            shapes = [(batch, max_length, heads, dim)] * 2
        return tuple(tuple(jnp.zeros(shape, dtype) for shape in shapes) for _ in self.layers)
