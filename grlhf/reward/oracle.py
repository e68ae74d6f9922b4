"""The oracle reward: the synthetic world's true quality of each answer (for calibration runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from grlhf.data.loaders import Prompt
from grlhf.reward.base import Rewards, complete_mask
from grlhf.rollout.base import Completion


@dataclass(frozen=True)
class OracleReward:
    """``Prompt.true_quality`` of each complete answer; answers with no stop token get ``incomplete_score``
    (as the group judge gives them)."""

    incomplete_score: float = 0.0

    def __call__(self, requests: Sequence[Prompt], completions: Sequence[Sequence[Completion]], *,
                 rng: np.random.Generator, step: int) -> Rewards:
        if any(p.scene is None for p in requests):
            raise ValueError("reward.source=oracle needs prompts of the synthetic task (data.source=synthetic)")
        complete = complete_mask(completions)
        scores = [[p.true_quality(c.text) if ok else self.incomplete_score for c, ok in zip(group, oks)]
                  for p, group, oks in zip(requests, completions, complete)]
        return Rewards(np.asarray(scores, np.float32).reshape(-1), {})


__all__ = ["OracleReward"]
