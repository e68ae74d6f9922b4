"""Tempered token log-probs and entropy from logits, memory-aware for large vocabularies.

Both use ``z = logits / T`` in float32 (the rollout temperature T, as verl, TRL and OpenRLHF do for
old, current and reference log-probs). The forward pass is three fused reductions over the vocabulary
(max, sum of exp, and the entropy's spread) that write nothing full-size (see ``_row_scale``); the
custom backward pass keeps only the logits and two ``[B, T]`` vectors and rebuilds the softmax in one
fused elementwise pass, instead of saving a full-size softmax as plain autodiff would.
"""

from __future__ import annotations

from numbers import Real

import jax
import jax.numpy as jnp


def _check_temperature(temperature) -> None:
    if isinstance(temperature, Real) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _row_scale(row: jax.Array, scale) -> jax.Array:
    """``scale`` as a ``[..., 1]`` vector derived from a row statistic.

    XLA:CPU materialises a full-size intermediate that two vocabulary reductions share (here a
    ``[B, T, V]`` float32 copy of the logits, scaled by ``1/T``: 2 GiB in ``bench/rl_core.py``). Giving
    one reduction its scale through a row vector keeps the two expressions distinct, so each fuses
    into its own single pass over the logits and nothing full-size is written.
    """
    return (row * 0.0 + scale)[..., None]


def _forward(logits: jax.Array, tokens: jax.Array, temperature):
    x = logits.astype(jnp.float32)
    inv_t = 1.0 / temperature
    peak = jax.lax.stop_gradient(jnp.max(x, axis=-1))  # max(x / T) = max(x) / T for T > 0
    top = peak[..., None]
    total = jnp.sum(jnp.exp((x - top) * inv_t), axis=-1)
    row_inv_t = _row_scale(peak, inv_t)
    # H = log(total) + sum(e^((x - m)/T) (m - x)) / (T total): both terms >= 0, no cancellation
    spread = jnp.sum(jnp.exp(x * row_inv_t - top * row_inv_t) * (top * _row_scale(peak, 1.0) - x), axis=-1)
    lse = peak * inv_t + jnp.log(total)
    ent = jnp.log(total) + inv_t * spread / total
    picked = jnp.take_along_axis(x, tokens[..., None], axis=-1)[..., 0]
    return picked * inv_t - lse, ent, lse


@jax.custom_vjp
def _logprobs_and_entropy(logits, tokens, temperature):
    logp, ent, _ = _forward(logits, tokens, temperature)
    return logp, ent


def _fwd(logits, tokens, temperature):
    logp, ent, lse = _forward(logits, tokens, temperature)
    return (logp, ent), (logits, tokens, temperature, lse, ent)


def _bwd(residuals, cotangents):
    logits, tokens, temperature, lse, ent = residuals
    g_logp, g_ent = cotangents
    x = logits.astype(jnp.float32)
    inv_t = _row_scale(lse, 1.0 / temperature)
    log_probs = x * inv_t - lse[..., None]
    probs = jnp.exp(log_probs)
    onehot = jnp.arange(logits.shape[-1], dtype=tokens.dtype) == tokens[..., None]
    # d logp / dz = onehot - p ;  d H / dz = -p (log p + H), with z = x / T
    g_z = jnp.where(onehot, g_logp[..., None], 0.0) - probs * (
        g_logp[..., None] + g_ent[..., None] * (log_probs + ent[..., None]))
    g_logits = (g_z * inv_t).astype(logits.dtype)
    g_temperature = -jnp.sum(g_z * x) / temperature**2  # dz/dT = -x / T^2
    return g_logits, None, g_temperature


_logprobs_and_entropy.defvjp(_fwd, _bwd)


def logprobs_and_entropy(
    logits: jax.Array, tokens: jax.Array, temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Return ``(log p(token), entropy)`` of ``softmax(logits / T)``, both float32 ``[..., T]``.

    One pass over the vocabulary serves both; gradients flow to ``logits`` only.
    """
    _check_temperature(temperature)
    tokens = jnp.asarray(tokens)
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {logits.shape} and tokens {tokens.shape} disagree on the leading dims")
    return _logprobs_and_entropy(logits, tokens, temperature)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Log-probability of each token under ``softmax(logits / T)``: ``[B, T, V], [B, T] -> [B, T]``."""
    return logprobs_and_entropy(logits, tokens, temperature)[0]


def entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy of ``softmax(logits / T)`` per position: ``[B, T, V] -> [B, T]``."""
    tokens = jnp.zeros(logits.shape[:-1], jnp.int32)
    return logprobs_and_entropy(logits, tokens, temperature)[1]
