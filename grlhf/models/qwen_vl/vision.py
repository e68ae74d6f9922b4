"""The vision towers of Qwen2-VL (LayerNorm, quick-GELU MLP) and Qwen2.5-VL (RMSNorm, SwiGLU MLP with
biases, window attention on all blocks but ``fullatt_block_indexes``), and the patch merger.

The tower sees patches in the processor's order. Everything that depends only on ``grid_thw`` (the
2D rotary angles, the attention segments, the window permutation) is computed on the host in numpy
(``rope.py``) and passed in as arrays, so one jitted program serves every image of a shape bucket.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from grlhf.models.qwen_vl.config import VisionConfig
from grlhf.models.qwen_vl.flash import Mask
from grlhf.models.qwen_vl.layers import LayerNorm, RMSNorm, attention, gelu_exact, linear, quick_gelu, rotate_half
from grlhf.models.qwen_vl.projections import dense, swiglu, written_backward
from grlhf.models.qwen_vl.remat import checkpointed, remat_name


class SegmentLayout(NamedTuple):
    """Contiguous attention segments of N rows packed into ``[S, Lmax]`` (host-computed, see inputs.py).

    Attention runs per segment on the packed rows instead of over all N rows with a block-diagonal
    mask, which would spend most of its work on masked pairs.
    """

    gather: jax.Array  # [S, Lmax] int32: the row at each packed slot (0 in unused slots)
    valid: jax.Array  # [S, Lmax] bool: slot holds a row
    scatter: jax.Array  # [N] int32: the packed slot (s * Lmax + j) of each row


class VisionInputs(NamedTuple):
    """Host-prepared inputs of one vision call (all images, then all videos, concatenated)."""

    pixel_values: jax.Array  # [N, C*T*P*P]
    rotary: jax.Array  # [N, head_dim] float32 angles, processor order
    full: SegmentLayout  # one segment per frame of each image / video
    window_index: Optional[jax.Array] = None  # [N / m^2] int32 (Qwen2.5-VL): merged-token window order
    windows: Optional[SegmentLayout] = None  # (Qwen2.5-VL) the attention windows, in window order


class PatchEmbed(nnx.Module):
    """Conv3d with stride = kernel over (C, T, P, P): one matmul on each flattened patch."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        self.proj = linear(cfg.patch_dim, cfg.width, bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                           precision=precision)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        return self.proj(pixel_values)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.qkv = linear(cfg.width, 3 * cfg.width, bias=True, **kw)
        self.proj = linear(cfg.width, cfg.width, bias=True, **kw)
        self.num_heads = cfg.num_heads

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, layout: SegmentLayout, impl: str) -> jax.Array:
        n, width = x.shape
        written = written_backward(impl)
        qkv = dense(x, self.qkv, written).reshape(n, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        # The vision rotary runs in float32 and casts back (transformers' apply_rotary_pos_emb_vision).
        rotate = lambda t: (t.astype(jnp.float32) * cos + rotate_half(t.astype(jnp.float32)) * sin).astype(t.dtype)  # noqa: E731
        pack = lambda t: t[layout.gather]  # noqa: E731  [S, Lmax, heads, hd]
        # Keys of the segment; padded query slots are dropped below. A segment's rows fill its first slots,
        # so the flash kernel takes them as sequence lengths (flash.py), not as a mask.
        mask = Mask(allowed=layout.valid[:, None, None, :], run=(None, jnp.sum(layout.valid, -1, dtype=jnp.int32)))
        out = attention(pack(rotate(q)), pack(rotate(k)), pack(v), mask, impl=impl)
        out = out.reshape((-1,) + out.shape[2:])[layout.scatter]
        return dense(out.reshape(n, width), self.proj, written)


class Qwen2VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.fc1 = linear(cfg.width, cfg.intermediate_size, bias=True, **kw)
        self.fc2 = linear(cfg.intermediate_size, cfg.width, bias=True, **kw)

    def __call__(self, x: jax.Array, written: bool = True) -> jax.Array:
        """(quick-GELU: autodiff either way; ``written`` is the SwiGLU MLP's switch)"""
        return self.fc2(quick_gelu(self.fc1(x)))


class Qwen25VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.gate_proj = linear(cfg.width, cfg.intermediate_size, bias=True, **kw)
        self.up_proj = linear(cfg.width, cfg.intermediate_size, bias=True, **kw)
        self.down_proj = linear(cfg.intermediate_size, cfg.width, bias=True, **kw)

    def __call__(self, x: jax.Array, written: bool = True) -> jax.Array:
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj, written)


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, family: str, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        if family == "qwen2_vl":
            self.norm1 = LayerNorm(cfg.width, 1e-6, param_dtype=param_dtype)
            self.norm2 = LayerNorm(cfg.width, 1e-6, param_dtype=param_dtype)
            self.mlp = Qwen2VisionMLP(cfg, **kw)
        else:
            self.norm1 = RMSNorm(cfg.width, 1e-6, param_dtype=param_dtype)
            self.norm2 = RMSNorm(cfg.width, 1e-6, param_dtype=param_dtype)
            self.mlp = Qwen25VisionMLP(cfg, **kw)
        self.attn = VisionAttention(cfg, **kw)

    def __call__(self, x, cos, sin, layout: SegmentLayout, impl: str):
        x = x + self.attn(self.norm1(x), cos, sin, layout, impl)
        return x + self.mlp(self.norm2(x), written_backward(impl))


class PatchMerger(nnx.Module):
    """Norm, then 4 consecutive patches concatenated -> Linear -> exact GELU -> Linear (HF ``mlp.0``/``mlp.2``)."""

    def __init__(self, cfg: VisionConfig, family: str, *, rngs: nnx.Rngs, dtype, param_dtype, precision=None):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        merged = cfg.width * cfg.spatial_merge_size**2
        norm = LayerNorm if family == "qwen2_vl" else RMSNorm
        self.ln_q = norm(cfg.width, 1e-6, param_dtype=param_dtype)
        self.mlp = nnx.List([linear(merged, merged, bias=True, **kw), None, linear(merged, cfg.out_size, bias=True, **kw)])
        self.merged = merged

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x).reshape(-1, self.merged)
        return self.mlp[2](gelu_exact(self.mlp[0](x)))


class VisionTransformer(nnx.Module):
    """``model.visual``: patch embedding, blocks, merger. Returns merged features ``[N / m^2, out_size]``."""

    def __init__(self, cfg: VisionConfig, family: str, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, precision=None, remat: Union[str, bool] = "none",
                 attention_impl: str = "xla"):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.cfg, self.family, self.dtype = cfg, family, dtype
        self.remat, self.attention_impl = remat_name(remat), attention_impl
        self.patch_embed = PatchEmbed(cfg, **kw)
        self.blocks = nnx.List([VisionBlock(cfg, family, **kw) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, family, **kw)

    def __call__(self, inputs: VisionInputs) -> jax.Array:
        merge = self.cfg.spatial_merge_size**2
        x = self.patch_embed(inputs.pixel_values.astype(self.dtype))
        angles = inputs.rotary.astype(jnp.float32)
        windowed = self.family == "qwen2_5_vl"
        if windowed:
            permute = lambda t: t.reshape(-1, merge, t.shape[-1])[inputs.window_index].reshape(-1, t.shape[-1])  # noqa: E731
            x, angles = permute(x), permute(angles)
        cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]

        def run_block(block, x, layout):
            return block(x, cos, sin, layout, self.attention_impl)

        run_block = checkpointed(run_block, self.remat)
        for index, block in enumerate(self.blocks):
            use_full = not windowed or index in self.cfg.fullatt_block_indexes
            x = run_block(block, x, inputs.full if use_full else inputs.windows)
        merged = self.merger(x)
        if windowed:
            merged = merged[jnp.argsort(inputs.window_index)]
        return merged
