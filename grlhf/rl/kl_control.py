"""KL in the reward (PPO/InstructGPT style) with fixed or adaptive coefficient (verl's controllers).

Functional: the coefficient is a value the caller carries; ``update`` returns the next one.
Off by default in grlhf (KL goes in the loss, as verl's GRPO recipe); enabling both double-penalises.
Config: ``algorithm.kl_in_reward`` (verl's ``algorithm.use_kl_in_reward`` / ``kl_ctrl`` / ``kl_penalty``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from grlhf.rl.kl import kl_penalty

KL_CONTROLLERS: tuple[str, ...] = ("fixed", "adaptive")  # verl's algorithm.kl_ctrl.type


@dataclass(frozen=True)
class KLController:
    """``kind='fixed'`` keeps ``init_coef``; ``kind='adaptive'`` follows Ziegler et al. (2019)."""

    kind: str = "fixed"
    init_coef: float = 0.001
    target_kl: float = 0.1
    horizon: int = 10000

    def __post_init__(self) -> None:
        if self.kind not in KL_CONTROLLERS:
            raise ValueError(f"KL controller kind must be {' or '.join(map(repr, KL_CONTROLLERS))}, "
                             f"got {self.kind!r}")
        if self.kind == "adaptive" and not (self.target_kl > 0 and self.horizon > 0):
            raise ValueError("adaptive KL control needs target_kl > 0 and horizon > 0")

    def update(self, coef: float, current_kl: float, n_steps: int) -> float:
        """Next coefficient: ``coef * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon)``."""
        if self.kind == "fixed":
            return coef
        error = jnp.clip(current_kl / self.target_kl - 1.0, -0.2, 0.2)
        return coef * (1.0 + error * n_steps / self.horizon)


def apply_kl_in_reward(
    scores: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    mask: jax.Array,
    coef: float,
    kind: str = "k1",
) -> tuple[jax.Array, jax.Array]:
    """Token rewards ``score at the last valid token - coef * kl`` and the batch's mean KL.

    The KL uses the rollout's (old) log-probs, so it shapes the reward and carries no gradient.
    For outcome estimators such as GRPO the sequence score is then ``token_rewards.sum(-1)``.
    Returns ``(token_rewards [B, T], current_kl)`` where ``current_kl`` is the mean over sequences of
    the per-sequence masked mean KL (what ``KLController.update`` takes).
    """
    mask, kld, lengths, current_kl = _masked_kl(old_logp, ref_logp, mask, kind)
    last = jnp.maximum(lengths.astype(jnp.int32) - 1, 0)
    positions = jnp.arange(mask.shape[-1])
    outcome = jnp.where(positions[None, :] == last[:, None], jnp.asarray(scores, jnp.float32)[:, None], 0.0)
    token_rewards = outcome - coef * kld
    return jax.lax.stop_gradient(token_rewards), current_kl


def sequence_kl_penalty(
    old_logp: jax.Array,
    ref_logp: jax.Array,
    mask: jax.Array,
    coef: float,
    kind: str = "k1",
) -> tuple[jax.Array, jax.Array]:
    """The KL-in-reward penalty of each whole sequence, for outcome estimators (GRPO, RLOO).

    Returns ``(penalty [B], current_kl)``: ``penalty = coef * sum_t mask * kl_t`` (float32, no gradient), so
    the sequence reward is ``scores - penalty``, which equals ``apply_kl_in_reward(scores, ...)[0].sum(-1)``;
    ``current_kl`` as there (for ``KLController.update``).
    """
    _, kld, _, current_kl = _masked_kl(old_logp, ref_logp, mask, kind)
    return jax.lax.stop_gradient(coef * jnp.sum(kld, axis=-1)), current_kl


def _masked_kl(old_logp, ref_logp, mask, kind):
    """``(float32 mask, masked per-token KL, valid lengths, mean over sequences of the per-sequence mean KL)``."""
    mask = jnp.asarray(mask, jnp.float32)
    kld = kl_penalty(old_logp, ref_logp, kind) * mask
    lengths = jnp.sum(mask, axis=-1)
    current_kl = jnp.mean(jnp.sum(kld, axis=-1) / jnp.maximum(lengths, 1.0))
    return mask, kld, lengths, jax.lax.stop_gradient(current_kl)
