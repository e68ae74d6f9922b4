"""Tempered log-probs and entropy: spec values (§11.5), the custom backward, torch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grlhf.rl import entropy, logprobs_and_entropy, token_logprobs
from tests.rl import verl_reference as ref


@pytest.mark.parametrize("temperature,logp,ent", [(1.0, -0.40760596, 0.8323955818), (0.7, -0.26011840, 0.6505726),
                                                  (0.5, -0.14293163, 0.4410574)])
def test_spec_values(temperature, logp, ent):
    logits = jnp.array([[1.0, 2.0, 3.0]])
    assert float(token_logprobs(logits, jnp.array([2]), temperature)[0]) == pytest.approx(logp, abs=1e-6)
    assert float(entropy(logits, temperature)[0]) == pytest.approx(ent, abs=1e-6)


def _plain(logits, tokens, temperature):
    """Autodiff of the textbook formulas, the reference for the custom backward."""
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
    logp = jnp.take_along_axis(logp_all, tokens[..., None], -1)[..., 0]
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, -1)


def _random(seed, shape, vocab, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal(shape + (vocab,))).astype(np.float32)
    tokens = rng.integers(0, vocab, shape).astype(np.int32)
    return jnp.asarray(logits), jnp.asarray(tokens)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_custom_backward_equals_autodiff(temperature):
    logits, tokens = _random(0, (3, 5), 50)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 5)).astype(np.float32))

    def loss(fn):
        def inner(x, t):
            logp, ent = fn(x, tokens, t)
            return jnp.sum(weights[0] * logp) + jnp.sum(weights[1] * ent)
        return inner

    ours = jax.jit(jax.grad(loss(logprobs_and_entropy), argnums=(0, 1)))(logits, jnp.float32(temperature))
    theirs = jax.grad(loss(_plain), argnums=(0, 1))(logits, jnp.float32(temperature))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5)


@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1.0, 0.7, 0.5, 2.0]), st.integers(2, 300))
def test_matches_torch_values_and_logit_gradients(seed, temperature, vocab):
    logits, tokens = _random(seed, (2, 3), vocab)
    ours = jax.value_and_grad(lambda x: jnp.sum(token_logprobs(x, tokens, temperature))
                              + 0.5 * jnp.sum(entropy(x, temperature)))
    value, grad = ours(logits)

    logits_t = torch.tensor(np.asarray(logits), dtype=torch.float64, requires_grad=True)  # the exact values
    tokens_t = torch.tensor(np.asarray(tokens), dtype=torch.int64)
    theirs = ref.logprobs(logits_t, tokens_t, temperature).sum() + 0.5 * ref.entropy(logits_t, temperature).sum()
    theirs.backward()
    np.testing.assert_allclose(float(value), theirs.item(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(grad, logits_t.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_per_position_values_match_torch():
    logits, tokens = _random(3, (4, 7), 1000)
    logp, ent = logprobs_and_entropy(logits, tokens, 0.7)
    logits_t = torch.tensor(np.asarray(logits), dtype=torch.float64)
    np.testing.assert_allclose(logp, ref.logprobs(logits_t, torch.tensor(np.asarray(tokens)).long(), 0.7), atol=2e-6)
    np.testing.assert_allclose(ent, ref.entropy(logits_t, 0.7), atol=2e-6)
    # verl computes in float32 as lse - sum(p z); agree with it as closely as it agrees with the exact values
    exact = ref.entropy(logits_t, 0.7).numpy()
    verl32 = ref.entropy(logits_t.float(), 0.7).double().numpy()
    assert np.abs(np.asarray(ent) - verl32).max() <= 2 * max(np.abs(verl32 - exact).max(), 1e-6)


def test_bfloat16_logits_compute_in_float32():
    logits, tokens = _random(4, (2, 6), 256)
    low = logits.astype(jnp.bfloat16)
    logp, ent = logprobs_and_entropy(low, tokens, 1.0)
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    exact = _plain(low.astype(jnp.float32), tokens, 1.0)  # the same bf16 values, upcast first
    np.testing.assert_allclose(logp, exact[0], atol=1e-5)
    np.testing.assert_allclose(ent, exact[1], atol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(token_logprobs(x, tokens)))(low)
    assert grad.dtype == jnp.bfloat16


def test_large_logits_are_stable():
    logits = jnp.array([[1e4, -1e4, 0.0]], jnp.float32)
    logp, ent = logprobs_and_entropy(logits, jnp.array([1]), 1.0)
    assert np.isfinite(np.asarray(logp)).all() and np.isfinite(np.asarray(ent)).all()
    assert float(ent[0]) == pytest.approx(0.0, abs=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(jnp.zeros((1, 3)), jnp.zeros(1, jnp.int32), 0.0)
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(jnp.zeros((2, 3)), jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_no_full_size_intermediate(temperature):
    """XLA's buffer plan: neither pass writes a logits-sized temporary (bench/rl_core.py saw 2 GiB once)."""
    logits = jax.ShapeDtypeStruct((2, 64, 8192), jnp.float32)
    tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)
    size = 2 * 64 * 8192 * 4

    def total(x, t):
        logp, ent = logprobs_and_entropy(x, t, temperature)
        return jnp.sum(logp) + jnp.sum(ent)

    for fn in (total, jax.grad(total)):
        temp = jax.jit(fn).lower(logits, tokens).compile().memory_analysis().temp_size_in_bytes
        assert temp < 0.05 * size, (fn, temp / size)
