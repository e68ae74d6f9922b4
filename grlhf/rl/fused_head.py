"""Token log-probs and entropy straight from hidden states, the LM head fused in, one vocabulary chunk at a time.

``logprobs_and_entropy(hidden @ weight, ...)`` needs the ``[N, V]`` logits: at 16 k positions and a 152 k
vocabulary that is 9 GiB in float32, plus as much again for their gradient. Here the vocabulary is cut into
chunks of ``chunk`` columns; a scan computes each chunk's logits ``z = hidden @ weight[:, c] / T`` and folds
them into running row statistics (online softmax: max ``m``, ``s = sum e^(z - m)``, ``t = sum e^(z - m) z``,
and the target's ``z``), so ``lse = m + log s`` and ``H = lse - t / s``. The backward pass recomputes each
chunk's logits instead of storing them: only ``hidden``, ``weight`` and two ``[N]`` vectors are kept, and
the largest temporary is one ``[N, chunk]`` block. Same values as the full computation (float32).

The train step (``trainer/step.py``) calls it on the hidden states of the response positions only.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def _chunks(weight: jax.Array, chunk: int) -> tuple[jax.Array, int]:
    """``weight [H, V]`` as ``[V / chunk, H, chunk]`` (zero-padded to a multiple of ``chunk``), and ``V``."""
    hidden, vocab = weight.shape
    pad = -vocab % chunk
    padded = jnp.pad(weight, ((0, 0), (0, pad)))
    return padded.reshape(hidden, -1, chunk).transpose(1, 0, 2), vocab


def _chunk_logits(hidden, block, index, chunk, vocab, inv_t, precision):
    """``z [N, chunk]`` of vocabulary chunk ``index`` (padding columns -inf) and the chunk's column ids."""
    z = jnp.einsum("nh,hc->nc", hidden, block, preferred_element_type=jnp.float32, precision=precision) * inv_t
    columns = index * chunk + jnp.arange(chunk)
    return jnp.where(columns[None, :] < vocab, z, -jnp.inf), columns


def _statistics(hidden, weight, tokens, inv_t, chunk, precision):
    """``(log p(token), entropy, lse)`` by one scan over the vocabulary chunks."""
    blocks, vocab = _chunks(weight, chunk)
    rows = hidden.shape[0]

    def fold(carry, inputs):
        m, s, t, picked = carry
        index, block = inputs
        z, columns = _chunk_logits(hidden, block, index, chunk, vocab, inv_t, precision)
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        e = jnp.exp(z - m_new[:, None])
        rescale = jnp.exp(m - m_new)
        s = s * rescale + jnp.sum(e, axis=-1)
        t = t * rescale + jnp.sum(jnp.where(e > 0, e * z, 0.0), axis=-1)
        picked = picked + jnp.sum(jnp.where(columns[None, :] == tokens[:, None], z, 0.0), axis=-1)
        return (m_new, s, t, picked), None

    start = (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32), jnp.zeros(rows, jnp.float32),
             jnp.zeros(rows, jnp.float32))
    (m, s, t, picked), _ = jax.lax.scan(fold, start, (jnp.arange(blocks.shape[0]), blocks))
    lse = m + jnp.log(s)
    return picked - lse, lse - t / s, lse


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(hidden, weight, tokens, temperature, chunk, precision):
    logp, ent, _ = _statistics(hidden, weight, tokens, 1.0 / temperature, chunk, precision)
    return logp, ent


def _fused_fwd(hidden, weight, tokens, temperature, chunk, precision):
    logp, ent, lse = _statistics(hidden, weight, tokens, 1.0 / temperature, chunk, precision)
    return (logp, ent), (hidden, weight, tokens, temperature, lse, ent)


def _fused_bwd(chunk, precision, residuals, cotangents):
    hidden, weight, tokens, temperature, lse, ent = residuals
    g_logp, g_ent = cotangents
    inv_t = 1.0 / temperature
    blocks, vocab = _chunks(weight, chunk)

    def grads(g_hidden, inputs):
        index, block = inputs
        z, columns = _chunk_logits(hidden, block, index, chunk, vocab, inv_t, precision)
        log_p = z - lse[:, None]
        p = jnp.exp(log_p)
        # d logp / dz = onehot - p ;  d H / dz = -p (log p + H)
        g_z = jnp.where(columns[None, :] == tokens[:, None], g_logp[:, None], 0.0) - p * (
            g_logp[:, None] + g_ent[:, None] * jnp.where(p > 0, log_p + ent[:, None], 0.0))
        g_hidden = g_hidden + jnp.einsum("nc,hc->nh", g_z, block.astype(jnp.float32), precision=precision) * inv_t
        g_block = jnp.einsum("nh,nc->hc", hidden.astype(jnp.float32), g_z, precision=precision) * inv_t
        g_t = -jnp.sum(jnp.where(columns[None, :] < vocab, g_z * z, 0.0)) * inv_t  # dz/dT = -z / T
        return g_hidden, (g_block, g_t)

    g_hidden, (g_blocks, g_t) = jax.lax.scan(grads, jnp.zeros(hidden.shape, jnp.float32),
                                             (jnp.arange(blocks.shape[0]), blocks))
    g_weight = g_blocks.transpose(1, 0, 2).reshape(weight.shape[0], -1)[:, :vocab]
    return g_hidden.astype(hidden.dtype), g_weight.astype(weight.dtype), None, jnp.sum(g_t)


_fused.defvjp(_fused_fwd, _fused_bwd)


def head_logprobs_and_entropy(hidden: jax.Array, weight: jax.Array, tokens: jax.Array, temperature: float = 1.0,
                              *, chunk: int = 8192, precision=None) -> tuple[jax.Array, jax.Array]:
    """``(log p(token), entropy)`` of ``softmax(hidden @ weight / T)``, float32 ``[N]``, never holding more
    than ``[N, chunk]`` logits; gradients flow to ``hidden``, ``weight`` and ``temperature``.

    ``hidden [N, H]``, ``weight [H, V]`` (a tied embedding ``[V, H]`` is passed transposed), ``tokens [N]``;
    ``precision`` is the matmuls' (``jax.lax.Precision``; the model's, for float32 parity on GPU).
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[0]:
        raise ValueError(f"hidden {hidden.shape} and weight {weight.shape} must be [N, H] and [H, V]")
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.shape != hidden.shape[:1]:
        raise ValueError(f"tokens {tokens.shape} must be [N] for hidden {hidden.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _fused(hidden, weight, tokens, jnp.asarray(temperature, jnp.float32), min(chunk, weight.shape[1]), precision)


__all__ = ["head_logprobs_and_entropy"]
