"""Greedy evaluations on held-out data with any ``Generator``: a judge's pairwise accuracy (both orders)
and a policy's answers checked against the synthetic world.

With ``limit`` (a ``grlhf.data.lengths.LengthLimit``) and the ``processor`` to measure with, items whose
prompt is too long are skipped and counted (``skipped_too_long``) instead of failing the batch."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from grlhf.data.conversations import prompt_conversation
from grlhf.data.lengths import LengthLimit, fitting
from grlhf.data.loaders import Prompt
from grlhf.reward.verdicts import judge_case, judge_conversation, judgment_rewards
from grlhf.rollout.base import Completion, Generator, SamplingParams


def greedy_completions(generator: Generator, items: Sequence, request: Callable[[Any], list], *, max_tokens: int,
                       batch_size: int, stop_token_ids: Sequence[int] = ()) -> list[Completion]:
    """One greedy completion per item, ``batch_size`` items at a time (requests built per batch, so only
    one batch's images are decoded at once)."""
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids))
    return [group[0] for start in range(0, len(items), batch_size)
            for group in generator.generate([request(item) for item in items[start:start + batch_size]], greedy)]


def items_that_fit(items: Sequence, processor, limit: Optional[LengthLimit],
                  conversations: Callable[[Any], list]) -> tuple[list, dict[str, float]]:
    """``(the items that fit, {"skipped_too_long": count})``; all items and no metric without ``limit``."""
    items = [items[i] for i in range(len(items))]
    if limit is None:
        return items, {}
    if processor is None:
        raise ValueError("skipping over-long prompts needs the processor that measures them (processor=)")
    kept = fitting(processor, items, limit, conversations)
    return kept, {"skipped_too_long": float(len(items) - len(kept))}


def evaluate_judge(generator: Generator, pairs: Sequence, *, template: str, max_tokens: int, batch_size: int = 32,
                   principles: bool = False, stop_token_ids: Sequence[int] = (), limit: Optional[LengthLimit] = None,
                   processor=None) -> dict[str, float]:
    """Greedy pairwise accuracy on ``pairs`` in both orders, with the parse-failure rate and position bias.

    ``accuracy``: the preferred answer scored strictly higher (ties and failures count as wrong);
    ``accuracy_first`` / ``accuracy_second``: with the preferred answer shown first / second;
    ``position_bias``: their difference. A pair too long in either order is skipped (``limit``).
    """
    pairs, skipped = items_that_fit(pairs, processor, limit, lambda p: [
        judge_conversation(p, swap, template=template, principles=principles) for swap in (False, True)])
    if not pairs:
        return {"pairs": 0.0, **skipped}
    cases = [judge_case(p, swap, template=template, principles=principles) for swap in (False, True) for p in pairs]
    texts = [c.text for c in greedy_completions(generator, cases, lambda c: c.conversation, max_tokens=max_tokens,
                                                batch_size=batch_size, stop_token_ids=stop_token_ids)]
    correct, failures = judgment_rewards(texts, [c.preferred for c in cases], "binary")
    half = len(pairs)
    first, second = float(correct[:half].mean()), float(correct[half:].mean())
    return {"accuracy": float(correct.mean()), "accuracy_first": first, "accuracy_second": second,
            "position_bias": first - second, "parse_failure_rate": failures / max(len(cases), 1),
            "pairs": float(half), **skipped}


def evaluate_policy(generator: Generator, prompts: Sequence[Prompt], *, max_tokens: int, batch_size: int = 64,
                    stop_token_ids: Sequence[int] = (), limit: Optional[LengthLimit] = None,
                    processor=None) -> dict[str, float]:
    """Greedy answers to held-out prompts: length and truncation; on the synthetic task also the true
    accuracy (quality 1) and mean quality. A prompt too long is skipped (``limit``)."""
    items, skipped = items_that_fit(prompts, processor, limit,
                                    lambda p: [prompt_conversation(p.question, p.image, decode=False)])
    if not items:
        return {"prompts": 0.0, **skipped}
    completions = greedy_completions(generator, items, lambda p: p.conversation, max_tokens=max_tokens,
                                     batch_size=batch_size, stop_token_ids=stop_token_ids)
    metrics = {"answer_length": float(np.mean([len(c.token_ids) for c in completions])),
               "truncated": float(np.mean([c.finish_reason == "length" for c in completions])),
               "prompts": float(len(items)), **skipped}
    qualities = [p.true_quality(c.text) for p, c in zip(items, completions)]
    if qualities and qualities[0] is not None:
        metrics["true_accuracy"] = float(np.mean([q == 1.0 for q in qualities]))
        metrics["true_quality"] = float(np.mean(qualities))
    return metrics


__all__ = ["evaluate_judge", "evaluate_policy", "greedy_completions", "items_that_fit"]
