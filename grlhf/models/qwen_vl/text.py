"""The Qwen2 decoder with grouped-query attention and multimodal rotary embeddings (M-RoPE)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from grlhf.models.qwen_vl.config import TextConfig
from grlhf.models.qwen_vl.rope import inv_freq
from grlhf.models.qwen_vl.sharding import BATCH, constrain
from grlhf.models.qwen_vl.layers import RMSNorm, apply_rotary, attention, linear, uses_cache_layout


KVCache = tuple  # per layer (keys, values); layouts in TextModel.init_cache


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

    def _qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        batch, length, _ = x.shape
        split = lambda t: t.reshape(batch, length, -1, self.head_dim)  # noqa: E731
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        return apply_rotary(split(self.q_proj(x)), cos, sin), apply_rotary(split(self.k_proj(x)), cos, sin), \
            split(self.v_proj(x))

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, allowed: jax.Array, impl: str) -> jax.Array:
        q, k, v = self._qkv(x, cos, sin)
        return self.o_proj(attention(q, k, v, allowed, impl=impl).reshape(x.shape[0], x.shape[1], -1))

    def cached(self, x, cos, sin, allowed, impl: str, kv: tuple[jax.Array, jax.Array], index: jax.Array):
        """Attention whose keys/values are written into ``kv`` (``TextModel.init_cache``'s layout) at slot
        ``index`` and read from all of it; ``allowed`` is ``[B, 1, L, S]``. Returns ``(out, new kv)``."""
        q, k, v = self._qkv(x, cos, sin)
        cache_layout = uses_cache_layout(impl)
        if cache_layout:
            k, v = k.transpose(0, 2, 3, 1), v.swapaxes(1, 2)
        key_axis, value_axis = (3, 2) if cache_layout else (1, 1)
        keys = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), index, axis=key_axis)
        values = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), index, axis=value_axis)
        out = attention(q, keys.astype(q.dtype), values.astype(q.dtype), allowed, impl=impl, cache_layout=cache_layout)
        return self.o_proj(out.reshape(x.shape[0], x.shape[1], -1)), (keys, values)


class MLP(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.gate_proj = linear(cfg.hidden_size, cfg.intermediate_size, bias=False, **kw)
        self.up_proj = linear(cfg.hidden_size, cfg.intermediate_size, bias=False, **kw)
        self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size, bias=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, **kw)

    def __call__(self, x, cos, sin, allowed, impl: str):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed, impl)
        return x + self.mlp(self.post_attention_layernorm(x))

    def cached(self, x, cos, sin, allowed, impl: str, kv, index):
        out, kv = self.self_attn.cached(self.input_layernorm(x), cos, sin, allowed, impl, kv, index)
        x = x + out
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class TextModel(nnx.Module):
    """``model.language_model``: embeddings, decoder layers, final norm (no head)."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 precision=None, remat: bool = False, attention_impl: str = "xla"):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.cfg, self.dtype, self.remat, self.attention_impl = cfg, dtype, remat, attention_impl
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, **kw) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)

    def __call__(self, inputs_embeds: jax.Array, position_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """``inputs_embeds [B, L, H]``, ``position_ids [3, B, L]``, ``attention_mask [B, L]`` -> ``[B, L, H]``."""
        length = inputs_embeds.shape[1]
        causal = jnp.tril(jnp.ones((length, length), bool))
        allowed = causal[None, None] & attention_mask.astype(bool)[:, None, None, :]
        cos, sin = mrope_cos_sin(position_ids, self.cfg, self.dtype)

        def run_layer(layer, x):
            return layer(x, cos, sin, allowed, self.attention_impl)

        if self.remat:
            run_layer = nnx.remat(run_layer)
        x = inputs_embeds.astype(self.dtype)
        for layer in self.layers:
            x = constrain(run_layer(layer, x), P(BATCH, None, None))
        return self.norm(x)

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

    def cached(self, inputs_embeds: jax.Array, position_ids: jax.Array, key_mask: jax.Array, cache: KVCache,
               index: jax.Array) -> tuple[jax.Array, KVCache]:
        """Run ``L`` new positions written at cache slots ``index .. index + L - 1`` (prefill or decode).

        ``key_mask [B, S]`` marks the cache slots that hold real tokens (left padding of the prompt is 0);
        query ``i`` sees the valid slots up to ``index + i``. Returns final-norm hidden states and the cache.
        """
        length, slots = inputs_embeds.shape[1], key_mask.shape[1]
        causal = jnp.arange(slots)[None, :] <= index + jnp.arange(length)[:, None]  # [L, S]
        allowed = causal[None, None] & key_mask.astype(bool)[:, None, None, :]
        cos, sin = mrope_cos_sin(position_ids, self.cfg, self.dtype)
        x = inputs_embeds.astype(self.dtype)
        new_cache = []
        for layer, kv in zip(self.layers, cache):
            x, kv = layer.cached(x, cos, sin, allowed, self.attention_impl, kv, index)
            new_cache.append(kv)
        return self.norm(x), tuple(new_cache)
