"""Outcome advantages over groups of responses to one prompt (verl semantics).

Groups are named by integer ids, not positions. Statistics are computed on scores shifted by the
first member of each group, so a group whose scores are all equal gives exactly 0 in float32
(naive centring leaves a residue that std-normalisation blows up: 8 x 0.7f -> +0.056 each).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grlhf.rl.segments import group_sum, groups_from_ids

# the outcome estimators (config ``algorithm.advantage``): GRPO (std-normalised when asked), Dr.GRPO (GRPO
# without the std), RLOO
ADVANTAGES: tuple[str, ...] = ("grpo", "drgrpo", "rloo")


def _centred(scores: jax.Array, group_ids: jax.Array):
    """Return (float32 scores, deviation from the group mean, the groups, group size > 1)."""
    scores = jnp.asarray(scores, jnp.float32).reshape(-1)
    groups = groups_from_ids(group_ids)
    shifted = scores - scores[groups.first]
    deviation = shifted - group_sum(shifted, groups) / groups.count
    return scores, deviation, groups, groups.count > 1


def grpo_advantages(
    scores: jax.Array,
    group_ids: jax.Array,
    *,
    eps: float = 1e-6,
    norm_by_std: bool = True,
) -> jax.Array:
    """GRPO advantages ``(s - mean_g) / (std_g + eps)`` with the unbiased (ddof=1) std.

    ``norm_by_std=False`` is Dr.GRPO (``s - mean_g``). A singleton group has mean 0 and std 1, so its
    advantage is the raw score (verl's rule). Returns float32 ``[B]``.
    """
    scores, deviation, groups, multi = _centred(scores, group_ids)
    if not norm_by_std:
        return jnp.where(multi, deviation, scores)
    variance = group_sum(deviation * deviation, groups) / jnp.maximum(groups.count - 1.0, 1.0)
    std = jnp.sqrt(variance)
    return jnp.where(multi, deviation / (std + eps), scores / (1.0 + eps))


def rloo_advantages(scores: jax.Array, group_ids: jax.Array) -> jax.Array:
    """REINFORCE leave-one-out: ``s_i - mean_{j != i} s_j``; a singleton keeps its raw score."""
    scores, deviation, groups, multi = _centred(scores, group_ids)
    scale = groups.count / jnp.maximum(groups.count - 1.0, 1.0)
    return jnp.where(multi, deviation * scale, scores)


def group_advantages(
    scores: jax.Array,
    group_ids: jax.Array,
    estimator: str = "grpo",
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> jax.Array:
    """The advantages of ``estimator`` (one of ``ADVANTAGES``): ``grpo`` is ``grpo_advantages`` with
    ``norm_by_std`` (verl's ``norm_adv_by_std_in_grpo``), ``drgrpo`` is GRPO without the std whatever
    ``norm_by_std`` says, ``rloo`` is ``rloo_advantages``. Returns float32 ``[B]``."""
    if estimator not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {estimator!r}; expected one of {ADVANTAGES}")
    if estimator == "rloo":
        return rloo_advantages(scores, group_ids)
    return grpo_advantages(scores, group_ids, eps=eps, norm_by_std=norm_by_std and estimator == "grpo")
