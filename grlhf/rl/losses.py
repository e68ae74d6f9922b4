"""Loss aggregation and the PPO clipped policy loss (verl semantics).

Every loss returns an unreduced ``(total, denom)`` pair; the loss is ``total / denom``. Summing
``total`` and ``denom`` over micro-batches gives exactly the whole-batch loss, so micro-batching and
gradient accumulation need no correction factors. The one exception is ``token-sum``, whose loss is
the total itself: its ``denom`` is 1 per call and the whole-batch loss is the sum of the totals.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
LOG_RATIO_CLAMP = 20.0


def aggregate(
    values: jax.Array, mask: jax.Array, mode: str, *, scale: Optional[float] = None
) -> tuple[jax.Array, jax.Array]:
    """Reduce per-token ``values [B, T]`` under ``mask [B, T]`` to ``(total, denom)``.

    - ``token-mean``: sum over valid tokens / number of valid tokens (verl's default).
    - ``token-sum``: sum over valid tokens; ``denom`` is 1.
    - ``seq-mean-token-sum``: per-sequence sums, averaged over sequences.
    - ``seq-mean-token-mean``: per-sequence means, averaged over sequences (the GRPO paper).
    - ``seq-mean-token-sum-norm``: per-sequence sums / ``scale``, averaged over sequences (Dr.GRPO;
      ``scale`` must be a constant such as the max response length, not the padded batch length).

    Sequences count only when they have at least one valid token, so padding rows add nothing.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {', '.join(AGG_MODES)}")
    mask = jnp.asarray(mask, jnp.float32)
    masked = jnp.where(mask > 0, jnp.asarray(values, jnp.float32), 0.0) * mask
    if mode == "token-mean":
        return jnp.sum(masked), jnp.sum(mask)
    if mode == "token-sum":
        return jnp.sum(masked), jnp.ones((), jnp.float32)
    seq_tokens = jnp.sum(mask, axis=-1)
    num_seqs = jnp.sum((seq_tokens > 0).astype(jnp.float32))
    seq_sums = jnp.sum(masked, axis=-1)
    if mode == "seq-mean-token-sum":
        return jnp.sum(seq_sums), num_seqs
    if mode == "seq-mean-token-mean":
        return jnp.sum(seq_sums / jnp.maximum(seq_tokens, 1.0)), num_seqs
    if scale is None:
        raise ValueError("seq-mean-token-sum-norm needs scale= (a constant such as the max response length)")
    return jnp.sum(seq_sums) / scale, num_seqs


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask > 0, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def ppo_clip_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = 3.0,
    agg: str = "token-mean",
    scale: Optional[float] = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate with asymmetric clip and dual-clip, as verl's vanilla policy loss.

    ``ratio = exp(clip(logp - old_logp, -20, 20))``; per token
    ``max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))``, and for ``A < 0`` also at most
    ``-A dual_clip`` (``dual_clip=None`` turns that off). ``advantages`` are per sequence ``[B]`` or
    per token ``[B, T]``. Returns ``(total, denom, metrics)``; metrics are token means over the mask:
    ``clipfrac``, ``clipfrac_lower`` (dual-clip active), ``approx_kl`` (mean of ``old_logp - logp``)
    and ``tokens`` (the mask's sum, to weight the metrics across micro-batches).
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    logp = jnp.asarray(logp, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    adv = jnp.asarray(advantages, jnp.float32)
    if adv.ndim == logp.ndim - 1:
        adv = adv[..., None]
    adv = jnp.broadcast_to(adv, logp.shape)

    log_ratio = jnp.clip(logp - jnp.asarray(old_logp, jnp.float32), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = jnp.maximum(unclipped, clipped)
    dual_active = jnp.zeros_like(per_token, dtype=bool)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (per_token > bound)
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, bound), per_token)

    total, denom = aggregate(per_token, mask, agg, scale=scale)
    metrics = {
        "clipfrac": _masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "clipfrac_lower": _masked_mean(dual_active.astype(jnp.float32), mask),
        "approx_kl": _masked_mean(-log_ratio, mask),
        "tokens": jnp.sum(mask),
    }
    return total, denom, jax.tree.map(jax.lax.stop_gradient, metrics)


def bradley_terry_loss(chosen: jax.Array, rejected: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum over pairs of ``-log sigmoid(s_w - s_l)`` (the score-only reward model's loss) and metric sums.

    A sum, not a mean, so micro-batches accumulate exactly (divide by the number of pairs once).
    ``softplus(-margin)`` is ``-log sigmoid(margin)`` without overflow for large margins.
    """
    margin = chosen.astype(jnp.float32) - rejected.astype(jnp.float32)
    total = jnp.sum(jax.nn.softplus(-margin))
    return total, {"accuracy": jnp.sum(margin > 0), "margin": jnp.sum(margin)}
