"""The cuDNN flash-attention path on CPU: its argument preparation (flash.py) against the XLA formula, and
every kernel call of a whole model forward, backward, prefill and decode put through the layout and
flash-support checks JAX applies before it calls cuDNN (which would have caught the vision tower's
broadcast mask, "Bias must have same seq length as QKV")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa

from grlhf.models.qwen_vl import QwenVLForConditionalGeneration, flash
from grlhf.models.qwen_vl.flash import Mask, resolve_attention_impl
from grlhf.models.qwen_vl.inputs import segment_layout
from grlhf.models.qwen_vl.layers import attention
from grlhf.models.qwen_vl.text import decoder_mask
from grlhf.rl import token_logprobs
from tests.models.qwen_vl import tiny

ATOL = 2e-5
CUDNN_VERSION = 91000  # what check_is_flash_attention is told (cuDNN 9.10); no GPU is asked


def check_like_jax(query, key, value, bias=None, mask=None, *, is_causal=False, query_seq_lengths=None,
                   key_value_seq_lengths=None, training=False):
    """What ``jax.nn.dot_product_attention(implementation="cudnn")`` checks before it calls the kernel,
    on bf16 stand-ins of the arguments: the mask folded into a bias, ``check_layout``,
    ``check_is_flash_attention``. Raises as JAX would."""
    half = lambda t: jax.ShapeDtypeStruct(t.shape, jnp.bfloat16)  # noqa: E731
    q, k, v = half(query), half(key), half(value)
    padded = query_seq_lengths is not None or key_value_seq_lengths is not None
    if padded:
        batch = query.shape[0]
        query_seq_lengths = jnp.full((batch,), query.shape[1], jnp.int32) if query_seq_lengths is None \
            else query_seq_lengths
        key_value_seq_lengths = jnp.full((batch,), key.shape[1], jnp.int32) if key_value_seq_lengths is None \
            else key_value_seq_lengths
    bias = cudnn_fa.combine_bias_and_mask(bias, mask, jnp.bfloat16)
    layout = cudnn_fa.AttentionLayout.BTNH
    cudnn_fa.check_layout(q, k, v, bias, query_seq_lengths, key_value_seq_lengths, None, None, None, None, layout)
    cudnn_fa.check_is_flash_attention(q, k, v, layout.value, CUDNN_VERSION, bias is not None, training)


class Recorder:
    """Stands in for ``jax.nn.dot_product_attention`` in flash.py: checks each call as JAX would for
    cuDNN, records its shapes, and runs JAX's XLA formula on the same arguments."""

    def __init__(self):
        self.calls: list[dict] = []
        self.training = False

    def __call__(self, query, key, value, bias=None, mask=None, *, is_causal=False, query_seq_lengths=None,
                 key_value_seq_lengths=None, implementation=None):
        assert implementation == "cudnn"
        check_like_jax(query, key, value, bias, mask, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
                       key_value_seq_lengths=key_value_seq_lengths, training=self.training)
        self.calls.append(dict(q=query.shape, k=key.shape, mask=None if mask is None else mask.shape,
                               causal=is_causal, lengths=query_seq_lengths is not None))
        return jax.nn.dot_product_attention(query, key, value, bias, mask, is_causal=is_causal,
                                            query_seq_lengths=query_seq_lengths,
                                            key_value_seq_lengths=key_value_seq_lengths, implementation="xla")


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(flash, "dot_product_attention", recorder)
    return recorder


# ---- the argument preparation, call site by call site, against the XLA formula ----

def _qkv(batch, length, keys, heads=4, kv_heads=2, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, length, heads, dim)).astype(np.float32)
    k, v = (rng.standard_normal((batch, keys, kv_heads, dim)).astype(np.float32) for _ in range(2))
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _rows(lengths_and_pads, total):
    """key masks [B, total] from (left pad, real tokens) per row."""
    return np.array([[0] * left + [1] * real + [0] * (total - left - real) for left, real in lengths_and_pads],
                    np.int32)


TEXT_SITES = {
    "training_right_padded": (_rows([(0, 12), (0, 7), (0, 1)], 12), 12, 0, False),
    "training_left_padded": (_rows([(0, 12), (5, 7), (11, 1)], 12), 12, 0, False),
    "training_both_sides_and_empty": (_rows([(2, 6), (0, 0), (3, 9)], 12), 12, 0, False),
    "prefill_left_padded": (_rows([(0, 10), (4, 6)], 10), 10, 0, True),
    "suffix_prefill_after_prefix": (np.array([[0, 1, 1, 1, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 1, 1, 1, 1]]),
                                    3, 5, True),
    "decode_step": (_rows([(0, 10), (4, 6)], 10), 1, jnp.asarray(7), True),
}


@pytest.mark.parametrize("site", sorted(TEXT_SITES))
def test_text_sites_match_the_xla_formula(site, recorder):
    """The decoder's masks through flash_call and JAX's formula equal layers.attention's XLA formula on
    every real query, with the KV cache's slots as keys where there is a cache."""
    key_mask, length, cache_index, cached = TEXT_SITES[site]
    key_mask = jnp.asarray(key_mask)
    q, k, v = _qkv(key_mask.shape[0], length, key_mask.shape[1])
    mask = decoder_mask(key_mask, length, cache_index, cached=cached)
    ours = attention(q, k, v, mask, impl="cudnn")
    reference = attention(q, k, v, mask.allowed, impl="xla")
    real_queries = np.array(jnp.any(mask.allowed[:, 0], axis=-1))  # [B, L]: queries that see a real key
    real_queries &= np.asarray(jax.lax.dynamic_slice_in_dim(key_mask, cache_index, length, axis=1)).astype(bool)
    assert real_queries.any()
    np.testing.assert_allclose(np.asarray(ours)[real_queries], np.asarray(reference)[real_queries], atol=ATOL)
    (call,) = recorder.calls
    uses_lengths = site.startswith(("training", "prefill"))
    assert call["lengths"] == call["causal"] == uses_lengths
    assert (call["mask"] is None) == uses_lengths


def test_vision_segments_match_the_xla_formula(recorder):
    """Packed vision segments (per image / per window): sequence lengths, no mask, no causality."""
    layout = segment_layout(np.repeat(np.arange(4), [16, 4, 9, 16]))
    q, k, v = _qkv(4, 16, 16, heads=4, kv_heads=4)
    mask = Mask(allowed=jnp.asarray(layout.valid)[:, None, None, :],
                run=(None, jnp.asarray(layout.valid.sum(-1), jnp.int32)))
    ours = np.asarray(attention(q, k, v, mask, impl="cudnn"))
    reference = np.asarray(attention(q, k, v, mask.allowed, impl="xla"))
    np.testing.assert_allclose(ours[layout.valid], reference[layout.valid], atol=ATOL)
    assert recorder.calls == [dict(q=(4, 16, 4, 16), k=(4, 16, 4, 16), mask=None, causal=False, lengths=True)]


def test_a_broadcast_mask_fails_jax_check():
    """The bug of issue 16: a [B, 1, 1, S] mask is no bias of the kernel's shape."""
    q, k, v = _qkv(3, 8, 8)
    with pytest.raises(ValueError, match="Bias must have same seq length"):
        check_like_jax(q, k, v, mask=jnp.ones((3, 1, 1, 8), bool))
    check_like_jax(q, k, v, mask=jnp.ones((3, 1, 8, 8), bool))


def test_roll_rows_round_trips():
    x = jnp.arange(2 * 5 * 3).reshape(2, 5, 3)
    shift = jnp.asarray([0, 2], jnp.int32)
    rolled = flash.roll_rows(x, shift)
    np.testing.assert_array_equal(rolled[1], jnp.roll(x[1], -2, axis=0))
    np.testing.assert_array_equal(flash.roll_rows(rolled, -shift), x)


# ---- whole models: every call checked, the cudnn path's results equal the XLA formula's ----

def _cudnn_copy(model):
    """The same weights with attention_impl='cudnn' (its KV cache in the kernel's layout)."""
    copy = nnx.clone(model)
    copy.model.language_model.attention_impl = copy.model.visual.attention_impl = "cudnn"
    return copy


def _right_padded(inputs):
    """``left_padded``'s rows with their padding moved to the right (a training batch's layout)."""
    out = dict(inputs)
    pads = (inputs["attention_mask"] == 0).sum(1)
    for name in ("input_ids", "attention_mask", "mm_token_type_ids"):
        out[name] = np.stack([np.roll(row, -pad) for row, pad in zip(inputs[name], pads)])
    return out


def _loss(model, prepared):
    logits = model.forward(*prepared)
    logp = token_logprobs(logits[:, :-1], jnp.asarray(prepared.input_ids)[:, 1:])
    real = jnp.asarray(prepared.attention_mask)
    return jnp.sum(logp * real[:, :-1] * real[:, 1:])  # logits of real positions only: padded ones are unspecified


@pytest.mark.parametrize("case", ["left_padded", "right_padded", "window_remainder"])
def test_training_forward_and_backward(pair, case, recorder):
    """Logits and parameter gradients of the cudnn path equal the XLA formula's (float32; real tokens),
    and every kernel call, vision and text, passes JAX's cuDNN checks in training mode."""
    family, _, model = pair
    inputs = _right_padded(tiny.make_inputs("left_padded")) if case == "right_padded" else tiny.make_inputs(case)
    prepared = model.prepare(**inputs)
    cudnn = _cudnn_copy(model)
    recorder.training = True  # every call is traced for the gradient
    run = nnx.jit(lambda m, inputs: (m.forward(*inputs), nnx.grad(_loss)(m, inputs)))
    (expected_logits, grads), (logits, cudnn_grads) = run(model, prepared), run(cudnn, prepared)
    valid = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(expected_logits)[valid], atol=1e-5, rtol=0)
    reference, ours = dict(nnx.to_flat_state(grads)), dict(nnx.to_flat_state(cudnn_grads))
    for path in reference:
        expected, got = np.asarray(reference[path].get_value()), np.asarray(ours[path].get_value())
        scale = max(np.abs(expected).max(), 1e-6)
        np.testing.assert_allclose(got / scale, expected / scale, atol=1e-4, err_msg=str(path))
    vision_calls = [c for c in recorder.calls if not c["causal"]]
    text_calls = [c for c in recorder.calls if c["causal"]]
    text, vision = model.config.text, model.config.vision
    assert len(text_calls) == 2 * text.num_hidden_layers  # the forward, then the gradient's, per layer
    assert len(vision_calls) == 2 * vision.depth
    assert all(c["mask"] is None and c["lengths"] for c in recorder.calls)


def test_prefill_decode_and_suffix_prefill(pair, recorder):
    """A left-padded prompt prefilled at slot 0, two tokens appended at static slot L (a suffix prefill),
    then two decode steps at traced slots: each step's logits equal the XLA model's full forward."""
    family, _, model = pair
    inputs = tiny.make_inputs("left_padded")
    new = np.random.default_rng(0).integers(10, 900, (2, 4)).astype(np.int32)
    full_inputs = dict(inputs, input_ids=np.concatenate([inputs["input_ids"], new], 1),
                       attention_mask=np.concatenate([inputs["attention_mask"], np.ones((2, 4), int)], 1),
                       mm_token_type_ids=np.concatenate([inputs["mm_token_type_ids"], np.zeros((2, 4), int)], 1))
    full = np.asarray(model.forward(*model.prepare(**full_inputs)))
    full_positions = model.prepare(**full_inputs).position_ids
    cudnn = _cudnn_copy(model)
    prompt = cudnn.prepare(**inputs)
    batch, length = prompt.input_ids.shape
    key_mask = jnp.asarray(full_inputs["attention_mask"], jnp.int32)
    cache = cudnn.init_cache(batch, length + 4)
    assert cache[0][0].shape == (batch, length + 4, model.config.text.num_key_value_heads, model.config.text.head_dim)
    logits, cache = cudnn.forward(prompt.input_ids, key_mask, prompt.position_ids, prompt.vision, prompt.token_types,
                                  cache=cache, cache_index=0)
    valid = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], full[:, :length][valid], atol=1e-5)
    logits, cache = cudnn.forward(new[:, :2], key_mask, full_positions[:, :, length:length + 2], cache=cache,
                                  cache_index=length)
    np.testing.assert_allclose(np.asarray(logits), full[:, length:length + 2], atol=1e-5)
    for i in (2, 3):
        logits, cache = cudnn.forward(new[:, i:i + 1], key_mask, full_positions[:, :, length + i:length + i + 1],
                                      cache=cache, cache_index=jnp.asarray(length + i))
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, length + i], atol=1e-5)
    layers = model.config.text.num_hidden_layers
    text_calls = [c for c in recorder.calls if c["causal"] or c["mask"] is not None]
    assert [c["q"][1] for c in text_calls] == [length] * layers + [2] * layers + [1] * 2 * layers
    assert [c["k"][1] for c in text_calls] == [length] * layers + [length + 2] * layers + [length + 4] * 2 * layers


def test_the_jax_sampler_decodes_through_the_kernel(pair, recorder):
    """``jax_sampler.decode`` (jitted prefill, then a fori_loop of decode steps) with the cudnn path gives
    the XLA model's greedy tokens and log-probs."""
    from grlhf.rollout.jax_sampler import decode

    family, _, model = pair
    prompt = model.prepare(**tiny.make_inputs("left_padded"))
    kw = dict(max_tokens=3, n=2, temperature=0.0, top_k=0, top_p=1.0, stop_ids=(1,))
    expected = decode(model, prompt, jax.random.key(0), **kw)
    got = decode(_cudnn_copy(model), prompt, jax.random.key(0), **kw)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(expected[1]), atol=1e-4)
    layers = model.config.text.num_hidden_layers
    assert sum(c["causal"] for c in recorder.calls) == layers  # the prefill
    assert sum(c["mask"] is not None and c["q"][1] == 1 for c in recorder.calls) == layers  # the loop body


# ---- "auto" ----

def test_auto_resolves_to_cudnn_only_on_gpu_in_half_precision(monkeypatch, pair):
    assert resolve_attention_impl("auto", jnp.bfloat16) == "xla"  # CPU
    assert resolve_attention_impl("cudnn", jnp.float32) == "cudnn"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_attention_impl("auto", jnp.bfloat16) == resolve_attention_impl("auto", "float16") == "cudnn"
    assert resolve_attention_impl("auto", jnp.float32) == "xla"
    assert resolve_attention_impl("xla", jnp.bfloat16) == "xla"
    model = nnx.eval_shape(lambda: QwenVLForConditionalGeneration(pair[2].config, rngs=nnx.Rngs(0),
                                                                  dtype=jnp.bfloat16, attention_impl="auto"))
    assert model.attention_impl == model.model.language_model.attention_impl == "cudnn"
    assert model.model.visual.attention_impl == "cudnn"
