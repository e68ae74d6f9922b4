"""Greedy evaluations on held-out data with any ``Generator``: a judge's pairwise accuracy (both orders)
and a policy's answers checked against the synthetic world."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from grlhf.data.loaders import Prompt
from grlhf.reward.verdicts import judge_case, judgment_rewards
from grlhf.rollout.base import Completion, Generator, SamplingParams


def greedy_completions(generator: Generator, items: Sequence, request: Callable[[Any], list], *, max_tokens: int,
                       batch_size: int, stop_token_ids: Sequence[int] = ()) -> list[Completion]:
    """One greedy completion per item, ``batch_size`` items at a time (requests built per batch, so only
    one batch's images are decoded at once)."""
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids))
    return [group[0] for start in range(0, len(items), batch_size)
            for group in generator.generate([request(item) for item in items[start:start + batch_size]], greedy)]


def evaluate_judge(generator: Generator, pairs: Sequence, *, template: str, max_tokens: int, batch_size: int = 32,
                   principles: bool = False, stop_token_ids: Sequence[int] = ()) -> dict[str, float]:
    """Greedy pairwise accuracy on ``pairs`` in both orders, with the parse-failure rate and position bias.

    ``accuracy``: the preferred answer scored strictly higher (ties and failures count as wrong);
    ``accuracy_first`` / ``accuracy_second``: with the preferred answer shown first / second;
    ``position_bias``: their difference.
    """
    cases = [judge_case(p, swap, template=template, principles=principles) for swap in (False, True) for p in pairs]
    texts = [c.text for c in greedy_completions(generator, cases, lambda c: c.conversation, max_tokens=max_tokens,
                                                batch_size=batch_size, stop_token_ids=stop_token_ids)]
    correct, failures = judgment_rewards(texts, [c.preferred for c in cases], "binary")
    half = len(pairs)
    first, second = float(correct[:half].mean()), float(correct[half:].mean())
    return {"accuracy": float(correct.mean()), "accuracy_first": first, "accuracy_second": second,
            "position_bias": first - second, "parse_failure_rate": failures / max(len(cases), 1),
            "pairs": float(half)}


def evaluate_policy(generator: Generator, prompts: Sequence[Prompt], *, max_tokens: int, batch_size: int = 64,
                    stop_token_ids: Sequence[int] = ()) -> dict[str, float]:
    """Greedy answers to held-out prompts: length and truncation; on the synthetic task also the true
    accuracy (quality 1) and mean quality."""
    items = [prompts[i] for i in range(len(prompts))]
    completions = greedy_completions(generator, items, lambda p: p.conversation, max_tokens=max_tokens,
                                     batch_size=batch_size, stop_token_ids=stop_token_ids)
    metrics = {"answer_length": float(np.mean([len(c.token_ids) for c in completions])),
               "truncated": float(np.mean([c.finish_reason == "length" for c in completions])),
               "prompts": float(len(items))}
    qualities = [p.true_quality(c.text) for p, c in zip(items, completions)]
    if qualities and qualities[0] is not None:
        metrics["true_accuracy"] = float(np.mean([q == 1.0 for q in qualities]))
        metrics["true_quality"] = float(np.mean(qualities))
    return metrics


__all__ = ["evaluate_judge", "evaluate_policy", "greedy_completions"]
