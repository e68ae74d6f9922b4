"""Stage 1 on the host: judge prompts from preference pairs, rule rewards, and the GRM's evaluation.

A pair is shown with its chosen answer first or second (``swap``); the label follows the order. The
rule reward (``reward.rules``) scores each sampled judgment; unparseable judgments get the rule's low
value and are counted. Evaluation judges every held-out pair greedily in *both* orders, so position
bias shows as the gap between the accuracy with the preferred answer first and second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from grlhf.reward.parse import parse_scores
from grlhf.reward.prompt import judge_messages
from grlhf.reward.rules import rule_rewards
from grlhf.rollout.jax_sampler import SamplingParams


@dataclass(frozen=True)
class JudgeCase:
    """A pair as the judge sees it: ``preferred`` is the position (1 or 2) of the chosen answer."""

    conversation: list
    preferred: int


def judge_case(pair, swap: bool, *, template: str, principles: bool = False) -> JudgeCase:
    """The judge conversation of a ``PreferencePair`` with ``chosen`` first (or second when ``swap``)."""
    first, second = (pair.rejected, pair.chosen) if swap else (pair.chosen, pair.rejected)
    image = pair.image.load() if hasattr(pair.image, "load") else pair.image
    messages = judge_messages(pair.question, first, second, image=image, template=template,
                              principles=pair.principles if principles else None)
    return JudgeCase(messages, 2 if swap else 1)


def judgment_rewards(texts: Sequence[str], preferred: Sequence[int], rule: str = "binary") -> tuple[np.ndarray, int]:
    """``(rewards [N], number of unparseable judgments)``."""
    failures = sum(parse_scores(t) is None for t in texts)
    return rule_rewards(texts, preferred, variant=rule), failures


def evaluate_judge(sampler, pairs: Sequence[Any], *, template: str, max_tokens: int, batch_size: int = 32,
                   principles: bool = False, stop_token_ids: Sequence[int] = ()) -> dict[str, float]:
    """Greedy pairwise accuracy on ``pairs`` in both orders, with the parse-failure rate and position bias.

    ``accuracy``: the preferred answer scored strictly higher (ties and failures count as wrong);
    ``accuracy_first`` / ``accuracy_second``: with the preferred answer shown first / second;
    ``position_bias``: their difference.
    """
    cases = [judge_case(p, swap, template=template, principles=principles) for swap in (False, True) for p in pairs]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids))
    texts: list[str] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        texts.extend(c[0].text for c in sampler.generate([c.conversation for c in chunk], greedy))
    preferred = [c.preferred for c in cases]
    correct, failures = judgment_rewards(texts, preferred, "binary")
    half = len(pairs)
    first, second = float(correct[:half].mean()), float(correct[half:].mean())
    return {"accuracy": float(correct.mean()), "accuracy_first": first, "accuracy_second": second,
            "position_bias": first - second, "parse_failure_rate": failures / max(len(cases), 1),
            "pairs": float(half)}


def sample_orders(rng: np.random.Generator, indices, balanced: bool) -> list[tuple[int, bool]]:
    """``(pair index, swap)`` cases of a step: each pair in both orders (``balanced``), or in one random
    order (a fair coin: ``swap`` shows the chosen answer second)."""
    if balanced:
        return [(int(i), swap) for i in indices for swap in (False, True)]
    return [(int(i), bool(s)) for i, s in zip(indices, rng.random(len(indices)) < 0.5)]


def trace_example(item: dict, *, template: str) -> tuple[list, str]:
    """A warm-start example: the judge conversation of a synthetic trace item in its own order, and the trace."""
    messages = judge_messages(item["question"], item["response_1"], item["response_2"], image=item["image"],
                              template=template)
    return messages, item["trace"]


__all__ = ["JudgeCase", "evaluate_judge", "judge_case", "judgment_rewards", "sample_orders", "trace_example"]

