"""``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` in Flax NNX.

Attribute paths mirror the HF module names (``model.visual.blocks.3.attn.qkv``,
``model.language_model.layers.0.self_attn.q_proj``, ``lm_head``), so ``hf_params.py`` maps names with
one table. ``forward`` is the jittable core on prepared arrays, with or without a KV cache; calling the
model on the HF processor's outputs prepares them on the host and runs a cached jitted forward.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from grlhf.models.qwen_vl.config import QwenVLConfig
from grlhf.models.qwen_vl.flash import resolve_attention_impl
from grlhf.models.qwen_vl.inputs import ModelInputs, prepare_inputs
from grlhf.models.qwen_vl.layers import linear
from grlhf.models.qwen_vl.sharding import BATCH, constrain
from grlhf.models.qwen_vl.text import Index, KVCache, TextModel
from grlhf.models.qwen_vl.vision import VisionInputs, VisionTransformer


class QwenVLModel(nnx.Module):
    """``model``: the vision tower and the language model."""

    def __init__(self, config: QwenVLConfig, **kw):
        self.visual = VisionTransformer(config.vision, config.family, **kw)
        self.language_model = TextModel(config.text, **kw)


class QwenVLForConditionalGeneration(nnx.Module):
    """Qwen2-VL / Qwen2.5-VL with its LM head (tied to the embeddings when the config says so).

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype; norms, attention softmax and
    rotary embeddings follow transformers' float32 rules. ``remat`` names what each layer and vision block
    keeps for the backward pass (``remat.REMAT_POLICIES``; a bool: true is ``full``).
    ``attention_impl``: ``'xla'`` (eager formula, any backend), ``'cudnn'`` (flash attention on GPU, bf16 /
    fp16) or ``'auto'`` (resolved here, once: cudnn on a GPU backend with a half-precision ``dtype``, else
    xla; ``self.attention_impl`` holds the result). Each of them trains with the written-out backward passes
    of ``layers`` (attention, SwiGLU MLPs, projections); ``'xla_autodiff'`` is ``'xla'`` with JAX's autodiff
    throughout (the same gradients to float32 rounding, the older rounding).
    """

    def __init__(self, config: QwenVLConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 precision: Optional[jax.lax.Precision] = None, remat: Union[str, bool] = "none",
                 attention_impl: str = "xla"):
        attention_impl = resolve_attention_impl(attention_impl, dtype)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision, remat=remat,
                  attention_impl=attention_impl)
        self.config, self.attention_impl = config, attention_impl
        self.dtype, self.precision = dtype, precision
        self.model = QwenVLModel(config, **kw)
        self.lm_head = nnx.data(None if config.tie_word_embeddings else linear(
            config.text.hidden_size, config.text.vocab_size, bias=False, rngs=rngs, dtype=dtype,
            param_dtype=param_dtype, precision=precision))

    def embed(self, input_ids: jax.Array, vision: Optional[VisionInputs], token_types=None) -> jax.Array:
        """Token embeddings with the vision features scattered into the image and video tokens.

        Features come images first, then videos, each in row-major order of their tokens (HF's
        ``masked_scatter``); features past the last token (bucket padding) are ignored. ``token_types``
        (``mm_token_type_ids``: 1 image, 2 video) says which tokens take features; without it, every
        image / video placeholder id does (a sampled response may contain those ids as text).
        """
        embeds = constrain(self.model.language_model.embed_tokens(input_ids), P(BATCH, None, None))
        if vision is None:
            return embeds
        features = self.model.visual(vision).astype(embeds.dtype)
        if token_types is None:
            is_image = (input_ids == self.config.image_token_id).reshape(-1)
            is_video = (input_ids == self.config.video_token_id).reshape(-1)
        else:
            is_image, is_video = (jnp.asarray(token_types) == 1).reshape(-1), (jnp.asarray(token_types) == 2).reshape(-1)
        image_rank = jnp.cumsum(is_image) - 1
        video_rank = jnp.sum(is_image) + jnp.cumsum(is_video) - 1
        index = jnp.where(is_image, image_rank, jnp.where(is_video, video_rank, 0))
        gathered = features[jnp.clip(index, 0, features.shape[0] - 1)].reshape(embeds.shape)
        gathered = constrain(gathered, P(BATCH, None, None))
        return jnp.where((is_image | is_video).reshape(input_ids.shape)[..., None], gathered, embeds)

    def hidden_states(self, input_ids, attention_mask, position_ids, vision: Optional[VisionInputs] = None,
                      token_types=None, *, cache: Optional[KVCache] = None,
                      cache_index: Index = 0) -> Union[jax.Array, tuple[jax.Array, KVCache]]:
        """Final-norm hidden states ``[B, L, H]`` (with a cache: and the updated cache); the arguments
        are ``forward``'s."""
        embeds = self.embed(jnp.asarray(input_ids), vision, token_types)
        return self.model.language_model(embeds, jnp.asarray(position_ids), jnp.asarray(attention_mask), cache,
                                         cache_index)

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is not None:
            return self.lm_head(hidden)
        embedding = self.model.language_model.embed_tokens.embedding[...]
        return tied_logits(hidden, embedding.astype(hidden.dtype))

    def head_weight(self) -> jax.Array:
        """The LM head as ``[H, V]`` in the compute dtype (the tied embedding transposed), for heads that
        compute the logits themselves (``rl.fused_head``)."""
        if self.lm_head is not None:
            return self.lm_head.kernel[...].astype(self.dtype)
        return self.model.language_model.embed_tokens.embedding[...].astype(self.dtype).T

    def forward(self, input_ids, attention_mask, position_ids, vision: Optional[VisionInputs] = None,
                token_types=None, *, cache: Optional[KVCache] = None, cache_index: Index = 0,
                last_only: bool = False) -> Union[jax.Array, tuple[jax.Array, KVCache]]:
        """Logits ``[B, L, V]`` from prepared inputs (jittable); ``forward(*ModelInputs)`` is the training call.

        With a ``cache`` (``init_cache``) the ``L`` new positions are written at slots ``cache_index ..``:
        the prefill of a prompt (with its vision inputs) or a decode step. ``attention_mask`` is then
        ``[B, S]`` over the cache's slots, and the result is ``(logits, updated cache)``. ``last_only``:
        the logits of the last position only (``[B, 1, V]``: a prefill needs no more).
        """
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, vision, token_types, cache=cache,
                                    cache_index=cache_index)
        if cache is not None:
            hidden, cache = hidden
        logits = self.logits_from_hidden(hidden[:, -1:] if last_only else hidden)
        return logits if cache is None else (logits, cache)

    def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
        """An empty KV cache for ``forward`` (see ``TextModel.init_cache``)."""
        return self.model.language_model.init_cache(batch, max_length, dtype)

    def prepare(self, **processor_outputs: Any) -> ModelInputs:
        """Host-side inputs from the HF processor's outputs (see ``inputs.prepare_inputs``)."""
        return prepare_inputs(self.config, **processor_outputs)

    def __call__(self, input_ids, attention_mask=None, mm_token_type_ids=None, pixel_values=None, image_grid_thw=None,
                 pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None, position_ids=None,
                 pad_patches_to=None) -> jax.Array:
        """Logits for the HF processor's outputs (numpy or torch), through a cached jitted forward."""
        inputs = self.prepare(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids,
                              pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                              pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                              second_per_grid_ts=second_per_grid_ts, position_ids=position_ids,
                              pad_patches_to=pad_patches_to)
        return _jitted_forward(self, inputs)


@jax.custom_vjp
def tied_logits(hidden: jax.Array, embedding: jax.Array) -> jax.Array:
    """``hidden @ embedding.T`` whose backward reads the logits gradient row-major for the embedding
    gradient (autodiff's transposed layout costs a full-size copy on CPU; bench/model_step.py)."""
    return jnp.einsum("...h,vh->...v", hidden, embedding)


def _tied_logits_fwd(hidden, embedding):
    return tied_logits(hidden, embedding), (hidden, embedding)


def _tied_logits_bwd(residuals, grad):
    hidden, embedding = residuals
    flat_grad = grad.reshape(-1, grad.shape[-1])
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    grad_embedding = jax.lax.dot_general(flat_grad, flat_hidden, (((0,), (0,)), ((), ())))  # [V, H]
    return jnp.einsum("...v,vh->...h", grad, embedding), grad_embedding.astype(embedding.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


@nnx.jit
def _jitted_forward(model: QwenVLForConditionalGeneration, inputs: ModelInputs) -> jax.Array:
    return model.forward(*inputs)
