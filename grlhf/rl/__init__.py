"""grlhf's functional core: pure, jittable float32 array functions for RL (verl semantics)."""

from grlhf.rl.advantages import grpo_advantages, rloo_advantages
from grlhf.rl.grouped import grouped_comparison
from grlhf.rl.kl import KL_KINDS, kl_penalty
from grlhf.rl.kl_control import KLController, apply_kl_in_reward
from grlhf.rl.logprobs import entropy, logprobs_and_entropy, token_logprobs
from grlhf.rl.losses import AGG_MODES, aggregate, bradley_terry_loss, ppo_clip_loss

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "KLController",
    "aggregate",
    "apply_kl_in_reward",
    "bradley_terry_loss",
    "entropy",
    "grouped_comparison",
    "grpo_advantages",
    "kl_penalty",
    "logprobs_and_entropy",
    "ppo_clip_loss",
    "rloo_advantages",
    "token_logprobs",
]
