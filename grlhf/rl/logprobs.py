"""Tempered token log-probs and entropy from logits, memory-aware for large vocabularies.

Both use ``z = logits / T`` in float32 (the rollout temperature T, as verl, TRL and OpenRLHF do for
old, current and reference log-probs). The forward pass reduces over the vocabulary without a
float32 copy of the logits (XLA fuses the cast into the reductions); the custom backward pass keeps
only the logits and two ``[B, T]`` vectors and rebuilds the softmax in one fused elementwise pass,
instead of saving a full-size softmax as plain autodiff would.
"""

from __future__ import annotations

from numbers import Real

import jax
import jax.numpy as jnp


def _check_temperature(temperature) -> None:
    if isinstance(temperature, Real) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _forward(logits: jax.Array, tokens: jax.Array, temperature):
    z = logits.astype(jnp.float32) / temperature
    peak = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(z - peak), axis=-1)) + peak[..., 0]
    picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    logp = picked.astype(jnp.float32) / temperature - lse
    log_probs = z - lse[..., None]
    ent = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)  # no cancellation, unlike lse - sum(p z)
    return logp, ent, lse


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
    z = logits.astype(jnp.float32) / temperature
    log_probs = z - lse[..., None]
    probs = jnp.exp(log_probs)
    vocab = jnp.arange(logits.shape[-1], dtype=tokens.dtype)
    onehot = (vocab == tokens[..., None]).astype(jnp.float32)
    # d logp / dz = onehot - p ;  d H / dz = -p * (log p + H)
    g_z = g_logp[..., None] * (onehot - probs) - g_ent[..., None] * probs * (log_probs + ent[..., None])
    g_logits = (g_z / temperature).astype(logits.dtype)
    g_temperature = -jnp.sum(g_z * z) / temperature  # dz/dT = -z/T
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
