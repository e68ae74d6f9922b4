"""Logits, component and gradient parity with transformers (float32, eager attention)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from grlhf.models.qwen_vl import from_pretrained, prepare_inputs
from grlhf.models.qwen_vl.text import mrope_cos_sin
from grlhf.rl import token_logprobs
from tests.models.qwen_vl import tiny

LOGITS_ATOL = 1e-5


def _hf_logits(hf, inputs, family):
    with torch.no_grad():
        return hf(**tiny.torch_inputs(inputs, family)).logits.numpy()


@pytest.mark.parametrize("case", tiny.CASES)
def test_logits_match_transformers(pair, case):
    family, hf, model = pair
    inputs = tiny.make_inputs(case)
    ours = np.asarray(model(**inputs))
    theirs = _hf_logits(hf, inputs, family)
    valid = inputs["attention_mask"].astype(bool)  # padded query rows are garbage in HF
    assert np.abs(theirs[valid]).max() > 1.0  # the test is not comparing near-zero logits
    np.testing.assert_allclose(ours[valid], theirs[valid], atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("case", ["two_images", "window_remainder"])
def test_padded_patches_give_the_same_logits(pair, case):
    family, hf, model = pair
    inputs = tiny.make_inputs(case)
    real = inputs["pixel_values"].shape[0]
    padded = np.asarray(model(**inputs, pad_patches_to=real + 24))
    np.testing.assert_allclose(padded, np.asarray(model(**inputs)), atol=LOGITS_ATOL)  # other matmul shapes
    with pytest.raises(ValueError, match="multiple of 4"):
        model(**inputs, pad_patches_to=real + 2)


def test_vision_features_match(pair):
    family, hf, model = pair
    inputs = tiny.make_inputs("two_images")
    prepared = prepare_inputs(model.config, **inputs)
    ours = np.asarray(model.model.visual(prepared.vision))
    with torch.no_grad():
        out = hf.model.visual(torch.from_numpy(inputs["pixel_values"]), grid_thw=torch.from_numpy(inputs["image_grid_thw"]))
    theirs = out.pooler_output.numpy()
    assert ours.shape == theirs.shape == (4 + 12, 64)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_decoder_layer_matches(pair):
    family, hf, model = pair
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 64)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    positions = np.broadcast_to(np.clip(np.cumsum(mask, -1) - 1, 0, None), (3, 2, 7)).copy()
    hf_text = hf.model.language_model
    with torch.no_grad():
        pos_t = torch.from_numpy(positions)
        cos_sin = hf_text.rotary_emb(torch.from_numpy(x), pos_t)
        causal = np.tril(np.ones((7, 7), bool))[None, None] & mask.astype(bool)[:, None, None, :]
        bias = torch.from_numpy(np.where(causal, 0.0, np.finfo(np.float32).min).astype(np.float32))
        theirs = hf_text.layers[0](torch.from_numpy(x), attention_mask=bias, position_embeddings=cos_sin)
        theirs = (theirs[0] if isinstance(theirs, tuple) else theirs).numpy()
    cos, sin = mrope_cos_sin(jnp.asarray(positions), model.config.text, jnp.float32)
    np.testing.assert_allclose(cos, cos_sin[0].numpy(), atol=1e-6)
    layer = model.model.language_model.layers[0]
    ours = np.asarray(layer(jnp.asarray(x), cos, sin, jnp.asarray(causal), "xla"))
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-5, rtol=0)


def _response_logprob_loss(logits, input_ids, start):
    """Mean log-prob of the tokens from ``start`` on (the response), the scalar of the gradient test."""
    logp = token_logprobs(logits[:, start - 1:-1], input_ids[:, start:])
    return jnp.mean(logp)


def test_gradients_match_pytorch(pair):
    family, hf, model = pair
    inputs = tiny.make_inputs("one_image")
    start = inputs["input_ids"].shape[1] - 3  # the tokens after the image
    prepared = model.prepare(**inputs)

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        merged = nnx.merge(graphdef, params, rest)
        return _response_logprob_loss(merged.forward(*prepared), jnp.asarray(prepared.input_ids), start)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    flat = {".".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(grads)}

    hf.zero_grad()
    logits = hf(**tiny.torch_inputs(inputs, family)).logits
    logp = torch.log_softmax(logits[:, start - 1:-1], -1).gather(-1, torch.from_numpy(inputs["input_ids"][:, start:, None]))
    torch_loss = logp.mean()
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-5)
    named = dict(hf.named_parameters())
    checks = {
        "model.language_model.embed_tokens.embedding": ("model.language_model.embed_tokens.weight", lambda g: g),
        "model.visual.blocks.0.attn.qkv.kernel": ("model.visual.blocks.0.attn.qkv.weight", lambda g: g.T),
        "model.language_model.layers.1.mlp.up_proj.kernel": ("model.language_model.layers.1.mlp.up_proj.weight",
                                                             lambda g: g.T),
        "lm_head.kernel": ("lm_head.weight", lambda g: g.T),
    }
    for ours_name, (hf_name, layout) in checks.items():
        theirs = layout(named[hf_name].grad.numpy())
        ours = flat[ours_name]
        assert np.abs(theirs).max() > 0
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours / scale, theirs / scale, atol=1e-4, err_msg=ours_name)


def test_tied_embeddings_share_the_head(tmp_path):
    from grlhf.models.qwen_vl import from_pretrained

    hf = tiny.hf_model("qwen2_vl", tie=True)
    model = from_pretrained(tiny.save(hf, tmp_path))
    assert model.lm_head is None
    inputs = tiny.make_inputs("one_image")
    np.testing.assert_allclose(np.asarray(model(**inputs)), _hf_logits(hf, inputs, "qwen2_vl"), atol=LOGITS_ATOL)


def test_tied_head_gradient_matches_pytorch(tmp_path):
    from grlhf.models.qwen_vl import from_pretrained

    hf = tiny.hf_model("qwen2_5_vl", tie=True)
    model = from_pretrained(tiny.save(hf, tmp_path))
    inputs = tiny.make_inputs("one_image")
    start = inputs["input_ids"].shape[1] - 3
    prepared = model.prepare(**inputs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        logits = nnx.merge(graphdef, params, rest).forward(*prepared)
        return _response_logprob_loss(logits, jnp.asarray(prepared.input_ids), start)

    grads = jax.grad(loss_fn)(params)
    ours = np.asarray(grads["model"]["language_model"]["embed_tokens"]["embedding"].get_value())
    logits = hf(**tiny.torch_inputs(inputs, "qwen2_5_vl")).logits
    ids = torch.from_numpy(inputs["input_ids"][:, start:, None])
    torch.log_softmax(logits[:, start - 1:-1], -1).gather(-1, ids).mean().backward()
    theirs = hf.model.language_model.embed_tokens.weight.grad.numpy()  # embedding and head contributions
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours / scale, theirs / scale, atol=1e-4)


def test_image_token_count_mismatch_is_an_error(pair):
    _, _, model = pair
    inputs = tiny.make_inputs("one_image")
    inputs["input_ids"] = inputs["input_ids"].copy()
    inputs["input_ids"][0, 4] = 5  # one image token fewer than the grid's 16 features
    with pytest.raises(ValueError, match="the text has 15 image tokens, the grids give 16 features"):
        model(**inputs)


def test_missing_mm_token_type_ids_is_an_error(pair):
    _, _, model = pair
    inputs = tiny.make_inputs("one_image")
    del inputs["mm_token_type_ids"]
    with pytest.raises(ValueError, match="mm_token_type_ids is required"):
        model(**inputs)


def test_remat_and_bfloat16_run(pair, tmp_path):
    family, hf, model = pair
    from grlhf.models.qwen_vl import from_pretrained

    directory = tiny.save(hf, tmp_path / "hf")
    inputs = tiny.make_inputs("one_image")
    remat = from_pretrained(directory, remat=True)
    np.testing.assert_allclose(np.asarray(remat(**inputs)), np.asarray(model(**inputs)), atol=1e-6)
    low = from_pretrained(directory, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    logits = np.asarray(low(**inputs)).astype(np.float32)
    reference = np.asarray(model(**inputs))
    assert low(**inputs).dtype == jnp.bfloat16
    # bf16 compute drifts from float32 by the precision of bf16 (8 mantissa bits), not more
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()


@pytest.mark.parametrize("case", ["left_padded", "one_image"])
def test_kv_cache_prefill_and_decode_equal_the_full_forward(pair, case):
    """Prefill the prompt into the cache, then feed 4 tokens one at a time (teacher forcing): each
    step's logits equal the full forward over prompt + tokens at that position."""
    family, _, model = pair
    inputs = tiny.make_inputs(case)
    steps = 4
    prompt = model.prepare(**inputs)
    batch, length = prompt.input_ids.shape
    new_tokens = np.random.default_rng(0).integers(10, 900, (batch, steps)).astype(np.int32)

    full_inputs = dict(inputs, input_ids=np.concatenate([inputs["input_ids"], new_tokens], 1),
                       attention_mask=np.concatenate([inputs["attention_mask"], np.ones((batch, steps), int)], 1),
                       mm_token_type_ids=np.concatenate([inputs["mm_token_type_ids"], np.zeros((batch, steps), int)], 1))
    full = np.asarray(model(**full_inputs))

    key_mask = np.concatenate([prompt.attention_mask, np.ones((batch, steps), np.int32)], 1)
    cache = model.init_cache(batch, length + steps)
    step = nnx.jit(lambda m, *a, cache, index: m.forward(*a, cache=cache, cache_index=index))
    logits, cache = step(model, prompt.input_ids, key_mask, prompt.position_ids, prompt.vision, cache=cache, index=0)
    valid = prompt.attention_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], full[:, :length][valid], atol=LOGITS_ATOL)
    # generate continues from the last valid prompt position + 1 (prompts are left-padded)
    next_position = prompt.position_ids[:, :, -1] + 1  # [3, B]
    for i in range(steps):
        position = (next_position + i)[:, :, None].astype(np.int32)
        logits, cache = step(model, new_tokens[:, i:i + 1], key_mask, position, None, cache=cache, index=length + i)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, length + i], atol=LOGITS_ATOL)


@pytest.mark.parametrize("impl", ["xla", "cudnn"])
def test_kv_cache_layout_follows_the_attention_impl(pair, impl):
    """The XLA formula's cache is keys [B, kv, D, S] and values [B, kv, S, D] (its matmuls read them in
    place); the cuDNN kernel's is [B, S, kv, D] for both, which it reads as it is. (cuDNN runs on GPU only:
    here its layout, not its output.)"""
    from grlhf.models.qwen_vl import QwenVLForConditionalGeneration
    from grlhf.models.qwen_vl.layers import attention

    text = pair[2].config.text
    model = nnx.eval_shape(lambda: QwenVLForConditionalGeneration(pair[2].config, rngs=nnx.Rngs(0),
                                                                  attention_impl=impl))
    cache = model.init_cache(3, 40)
    assert len(cache) == text.num_hidden_layers
    kv, dim = text.num_key_value_heads, text.head_dim
    expected = [(3, kv, dim, 40), (3, kv, 40, dim)] if impl == "xla" else [(3, 40, kv, dim)] * 2
    assert [tuple(t.shape) for t in cache[0]] == expected
    if impl == "cudnn":
        q = jnp.zeros((3, 1, text.num_attention_heads, dim))
        with pytest.raises(ValueError, match="cuDNN kernel reads"):
            attention(q, *cache[0], jnp.ones((3, 1, 1, 40), bool), impl="cudnn", cache_layout=True)


@pytest.mark.parametrize("impl", ["xla", "xla_autodiff"])
def test_written_backwards_follow_the_attention_impl(pair, tmp_path, impl):
    """``xla`` (and every impl but one) takes the written-out backward passes of the attention, the MLPs and
    the projections (custom VJPs); ``xla_autodiff`` keeps JAX's autodiff everywhere, and its rounding (the
    embedded default pins it); both give PyTorch's gradients (test_gradients_match_pytorch for ``xla``)."""
    family, hf, _ = pair
    model = from_pretrained(tiny.save(hf, tmp_path), attention_impl=impl)
    prepared = model.prepare(**tiny.make_inputs("one_image"))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        return jnp.mean(nnx.merge(graphdef, params, rest).forward(*prepared))

    text = str(jax.make_jaxpr(loss_fn)(params))  # (in a gradient's jaxpr the calls are already resolved)
    assert ("custom_vjp_call" in text) == (impl == "xla")
