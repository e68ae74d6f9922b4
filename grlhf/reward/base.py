"""The reward protocol: everything that scores rollouts (the rule reward on GRM verdicts, the group
judge, the one-opponent judge, the score-only RM, the oracle) is called the same way, so an RL stage
names its reward and never branches on its kind."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

from grlhf.rollout.base import Completion


class Rewards(NamedTuple):
    scores: np.ndarray  # [B * n] float32, request-major: request b's completions at b * n .. b * n + n - 1
    metrics: dict[str, float]


class Reward(Protocol):
    def __call__(self, requests: Sequence[Any], completions: Sequence[Sequence[Completion]], *,
                 rng: np.random.Generator, step: int) -> Rewards:
        """Scores of the ``n`` completions of each request (a stage's request type: a ``JudgeCase`` for
        stage 1, a ``Prompt`` for stage 2). ``rng`` is the step's randomness, ``step`` its index."""
        ...


def complete_mask(completions: Sequence[Sequence[Completion]]) -> np.ndarray:
    """``[B, n]``: the completions that ended with a stop token (the rest ran out of budget)."""
    return np.array([[c.finish_reason == "stop" for c in group] for group in completions], bool)


__all__ = ["Reward", "Rewards", "complete_mask"]
