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
from grlhf.models.qwen_vl.layers import RMSNorm, apply_rotary, attention, linear


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

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, allowed: jax.Array, impl: str) -> jax.Array:
        batch, length, _ = x.shape
        split = lambda t: t.reshape(batch, length, -1, self.head_dim)  # noqa: E731
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        q = apply_rotary(split(self.q_proj(x)), cos, sin)
        k = apply_rotary(split(self.k_proj(x)), cos, sin)
        out = attention(q, k, split(self.v_proj(x)), allowed, impl=impl)
        return self.o_proj(out.reshape(batch, length, -1))


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
