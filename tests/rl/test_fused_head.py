"""The LM head fused with log-probs and entropy, a vocabulary chunk at a time: the same values and gradients
as the full logits (``rl.logprobs_and_entropy(hidden @ weight)``), and no full-size logits in the compiled
program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grlhf.rl import logprobs_and_entropy
from grlhf.rl.fused_head import head_logprobs_and_entropy


def _inputs(rows=12, hidden=16, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(0, 1, (rows, hidden)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.5, (hidden, vocab)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, vocab, rows), jnp.int32)
    return h, w, tokens


def _full(h, w, tokens, temperature):
    return logprobs_and_entropy(h @ w, tokens, temperature)


@pytest.mark.parametrize("chunk", [7, 16, 50, 64])  # a remainder, exact, one chunk, larger than V
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_equal_the_full_logits(chunk, temperature):
    h, w, tokens = _inputs()
    logp, ent = jax.jit(lambda *a: head_logprobs_and_entropy(*a, temperature, chunk=chunk))(h, w, tokens)
    expected_logp, expected_ent = _full(h, w, tokens, temperature)
    np.testing.assert_allclose(logp, expected_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, expected_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [7, 50])
def test_gradients_equal_the_full_logits(chunk):
    h, w, tokens = _inputs(seed=1)
    g_logp, g_ent = jnp.linspace(-1, 1, 12), jnp.linspace(0.5, -0.5, 12)

    def loss(fn):
        def f(h, w, t):
            logp, ent = fn(h, w, t)
            return jnp.sum(logp * g_logp + ent * g_ent)
        return f

    fused = jax.grad(loss(lambda h, w, t: head_logprobs_and_entropy(h, w, tokens, t, chunk=chunk)), (0, 1, 2))
    full = jax.grad(loss(lambda h, w, t: _full(h, w, tokens, t)), (0, 1, 2))
    for got, expected in zip(jax.jit(fused)(h, w, 0.8), full(h, w, 0.8)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_no_full_size_logits_in_the_compiled_gradient():
    """XLA's temporaries of the fused gradient stay far below one ``[N, V]`` float32 array; the full path's
    hold several."""
    h, w, tokens = _inputs(rows=256, hidden=32, vocab=16384)
    logits_bytes = 256 * 16384 * 4

    def temp_bytes(fn):
        grad = jax.jit(jax.grad(lambda h, w: jnp.sum(fn(h, w)[0] + fn(h, w)[1]), (0, 1)))
        return grad.lower(h, w).compile().memory_analysis().temp_size_in_bytes

    fused = temp_bytes(lambda h, w: head_logprobs_and_entropy(h, w, tokens, chunk=1024))
    full = temp_bytes(lambda h, w: _full(h, w, tokens, 1.0))
    assert full >= logits_bytes and fused < logits_bytes / 2, (fused, full, logits_bytes)


def test_shapes_are_checked():
    h, w, tokens = _inputs()
    with pytest.raises(ValueError, match="must be"):
        head_logprobs_and_entropy(h, w.T, tokens)
    with pytest.raises(ValueError, match="tokens"):
        head_logprobs_and_entropy(h, w, tokens[:3])
