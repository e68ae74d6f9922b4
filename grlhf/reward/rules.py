"""The GRM's RL reward: did the preferred answer get the strictly higher score?"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from grlhf.reward.parse import parse_scores

RULE_VARIANTS = ("binary", "signed")


def rule_reward(text: str, preferred: int, *, variant: str = "binary") -> float:
    """Reward of one judgment whose ground truth puts the preferred answer at position 1 or 2.

    ``binary`` (the released code): 1.0 when the preferred position scored strictly higher, else 0.0,
    and 0.0 when the output cannot be parsed. ``signed`` (the paper's §3 text): +1.0 or -1.0, and
    -1.0 when unparseable (the "otherwise" branch). ``preferred`` is the integer 1 or 2; a bool (or any
    non-integer) is a ``TypeError``, since ``True == 1`` would silently read as position 1.
    """
    if isinstance(preferred, (bool, np.bool_)) or not isinstance(preferred, (int, np.integer)):
        raise TypeError(f"preferred must be the int 1 or 2, got {type(preferred).__name__} {preferred!r}")
    if preferred not in (1, 2):
        raise ValueError(f"preferred must be 1 or 2, got {preferred!r}")
    if variant not in RULE_VARIANTS:
        raise ValueError(f"unknown rule variant {variant!r}; expected one of {RULE_VARIANTS}")
    low = 0.0 if variant == "binary" else -1.0
    scores = parse_scores(text)
    if scores is None:
        return low
    preferred_score, other_score = (scores[0], scores[1]) if preferred == 1 else (scores[1], scores[0])
    return 1.0 if preferred_score > other_score else low


def rule_rewards(texts: Sequence[str], preferred: Sequence[int], *, variant: str = "binary") -> np.ndarray:
    """``rule_reward`` over a batch, float32 ``[N]``."""
    if len(texts) != len(preferred):
        raise ValueError(f"{len(texts)} judgments but {len(preferred)} labels")
    return np.array([rule_reward(t, p, variant=variant) for t, p in zip(texts, preferred)], np.float32)
