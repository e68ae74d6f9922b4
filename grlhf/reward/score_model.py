"""The score-only reward model as stage 2's reward (``reward.source=rm``): each answer scored on its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from grlhf.data.batching import device_inputs, encode_micro_batches
from grlhf.models.qwen_vl.reward_model import reward_scores
from grlhf.models.qwen_vl.sharding import to_host
from grlhf.reward.base import Rewards, complete_mask
from grlhf.rollout.base import Completion


def score_answers(model, processor, conversations: Sequence[list], answers: Sequence[Any], *, batch_size: int,
                  length_buckets, patch_buckets=None, mesh=None) -> np.ndarray:
    """``[N]`` reward-model scores of ``(conversation, answer)`` rows; an answer is text (closed with end of
    turn) or sampled token ids (used verbatim)."""
    out = [to_host(reward_scores(model, device_inputs(model, host, mesh)))
           for host in encode_micro_batches(processor, conversations, list(answers), batch_size,
                                            length_buckets=length_buckets, patch_buckets=patch_buckets)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class ScoreReward:
    """Each complete answer scored by the reward model; answers with no stop token get ``incomplete_score``,
    as the group judge gives them."""

    model: Any
    processor: Any
    length_buckets: Sequence[int]
    patch_buckets: Optional[Sequence[int]] = None
    mesh: Any = None
    incomplete_score: float = 0.0
    batch_size: int = 64

    def __call__(self, requests: Sequence[Any], completions: Sequence[Sequence[Completion]], *,
                 rng: Optional[np.random.Generator] = None, step: int = 0) -> Rewards:
        """``n`` completions of each request (anything with a ``conversation``) -> ``[B * n]`` rewards."""
        complete = complete_mask(completions).reshape(-1)
        rows = [(conversation, c.token_ids) for r, group in zip(requests, completions)
                for conversation in [r.conversation] for c in group if c.finish_reason == "stop"]  # one per request
        rewards = np.full(complete.size, self.incomplete_score, np.float32)
        if rows:
            rewards[complete] = score_answers(self.model, self.processor, [r[0] for r in rows], [r[1] for r in rows],
                                              batch_size=self.batch_size, length_buckets=self.length_buckets,
                                              patch_buckets=self.patch_buckets, mesh=self.mesh)
        scored = rewards[complete]
        return Rewards(rewards, {"rm_calls": float(len(rows)), "rm_score_mean": float(scored.mean()) if rows else 0.0,
                                 "rm_score_std": float(scored.std()) if rows else 0.0})


__all__ = ["ScoreReward", "score_answers"]
