"""Grouped comparison: each response's reward is the mean of the GRM scores it received.

Paper §3: ``S(y_i) = 1 / (2(k-1)) * sum_{j != i} [s(y_i | y_i, y_j) + s(y_i | y_j, y_i)]`` when every
ordered pair is judged. A constant bonus for the first position adds the same amount to every S,
so group-normalised advantages cancel it. Failed judgments are masked, never counted as zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grouped_comparison(
    pair_scores: jax.Array,
    pair_valid: jax.Array,
    *,
    both_orders: bool = True,
    empty_score: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Mean score received by each response from the valid judgments of its group.

    ``pair_scores [G, k, k, 2]``: the judgment with response ``i`` first and ``j`` second gave
    ``[g, i, j, 0]`` to ``i`` and ``[g, i, j, 1]`` to ``j``. ``pair_valid [G, k, k]`` marks judgments that
    exist and parsed; the diagonal is ignored, and invalid entries may hold anything (even NaN).
    ``both_orders=False`` counts only judgments with ``i < j`` (the released code judges each pair once).
    Returns ``(S [G, k], counts [G, k])``; a response with no valid score gets ``empty_score``.
    """
    pair_scores = jnp.asarray(pair_scores, jnp.float32)
    if pair_scores.ndim != 4 or pair_scores.shape[-1] != 2 or pair_scores.shape[1] != pair_scores.shape[2]:
        raise ValueError(f"pair_scores must be [G, k, k, 2], got {pair_scores.shape}")
    if jnp.shape(pair_valid) != pair_scores.shape[:3]:
        raise ValueError(f"pair_valid must be {pair_scores.shape[:3]}, got {jnp.shape(pair_valid)}")
    k = pair_scores.shape[1]
    keep = jnp.ones((k, k), bool) & ~jnp.eye(k, dtype=bool)
    if not both_orders:
        keep = jnp.triu(keep, k=1)
    valid = jnp.asarray(pair_valid, bool) & keep
    as_first = jnp.where(valid, pair_scores[..., 0], 0.0)  # [g, i, j]: score i got, shown first
    as_second = jnp.where(valid, pair_scores[..., 1], 0.0)  # [g, j, i]: score i got, shown second
    totals = jnp.sum(as_first, axis=2) + jnp.sum(as_second, axis=1)
    counts = jnp.sum(valid, axis=2) + jnp.sum(valid, axis=1)
    S = jnp.where(counts > 0, totals / jnp.maximum(counts, 1), empty_score)
    return S, counts.astype(jnp.int32)
