"""grlhf's functional core: pure, jittable float32 array functions for RL (verl semantics)."""

from grlhf.rl.advantages import ADVANTAGES, group_advantages, grpo_advantages, rloo_advantages
from grlhf.rl.grouped import grouped_comparison
from grlhf.rl.kl import KL_KINDS, kl_penalty
from grlhf.rl.kl_control import KL_CONTROLLERS, KLController, apply_kl_in_reward, sequence_kl_penalty
from grlhf.rl.logprobs import entropy, logprobs_and_entropy, token_logprobs
from grlhf.rl.losses import AGG_MODES, aggregate, bradley_terry_loss, ppo_clip_loss

__all__ = [
    "ADVANTAGES",
    "AGG_MODES",
    "KL_CONTROLLERS",
    "KL_KINDS",
    "KLController",
    "aggregate",
    "apply_kl_in_reward",
    "bradley_terry_loss",
    "entropy",
    "group_advantages",
    "grouped_comparison",
    "grpo_advantages",
    "kl_penalty",
    "logprobs_and_entropy",
    "ppo_clip_loss",
    "rloo_advantages",
    "sequence_kl_penalty",
    "token_logprobs",
]
