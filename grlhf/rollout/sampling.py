"""Next-token sampling from logits: temperature, top-k, top-p, greedy; pure and jittable.

The log-prob reported for a sampled token is ``log_softmax(logits / T)`` at that token, the quantity
the trainer recomputes (``grlhf.rl.token_logprobs``), not the log-prob under the truncated top-k/top-p
distribution: old and new log-probs must be the same function of the logits (rl_math.md P11).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Set logits outside the top-k and the top-p nucleus to -inf (``top_k=0``, ``top_p=1`` keep all).

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``; the most
    likely token is always kept.
    """
    vocab = logits.shape[-1]
    if top_k < 0 or top_k > vocab:
        raise ValueError(f"top_k must be in [0, {vocab}], got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    neg_inf = jnp.asarray(-jnp.inf, logits.dtype)
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)  # back to vocab order
        logits = jnp.where(drop, neg_inf, logits)
    return logits


def categorical(key: Optional[jax.Array], logits: jax.Array, uniform: Optional[jax.Array] = None) -> jax.Array:
    """One exact draw per row from ``softmax(logits)`` by inverting the CDF with one uniform number per row
    (``uniform [...]`` in [0, 1), else drawn from ``key``).

    ``jax.random.categorical`` (Gumbel-max) draws a random number per vocabulary entry; at decode time on
    a small model that dominated the sampling step (bench/rollout.py). Entries with logit -inf have
    probability 0 and are never drawn.
    """
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
    if uniform is None:
        uniform = jax.random.uniform(key, logits.shape[:-1], dtype=cdf.dtype)
    return jnp.argmax(cdf > uniform[..., None].astype(cdf.dtype) * cdf[..., -1:], axis=-1)


def sample_tokens(key: Optional[jax.Array], logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, uniform: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Sample one token per row of ``logits [..., V]``; ``temperature=0`` is greedy. The randomness is
    ``key``'s, or ``uniform [...]`` (numbers in [0, 1) drawn ahead, e.g. for every decode step at once).

    Returns ``(tokens [...], logprobs [...])`` with ``logprobs = log_softmax(logits / T)[token]``
    (``T = 1`` for greedy).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        tokens = jnp.argmax(logits, axis=-1)
        scaled = logits
    else:
        scaled = logits / temperature
        tokens = categorical(key, filter_logits(scaled, top_k=top_k, top_p=top_p), uniform)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[..., None], axis=-1)[..., 0]
    return tokens.astype(jnp.int32), logprobs
