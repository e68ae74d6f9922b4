"""Stage 1's requests and reward: preference pairs as judge prompts, and the rule reward on verdicts.

A pair is shown with its chosen answer first or second (``swap``); the label follows the order. The
rule reward (``reward.rules``) scores each sampled judgment; unparseable judgments get the rule's low
value and are counted. The GRM's warm-start examples (synthetic judgment traces, and with
``answer_fraction`` the pair's question answered directly) are built here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from grlhf.data.conversations import as_pil, prompt_conversation
from grlhf.data.synthetic import world
from grlhf.reward.base import Rewards
from grlhf.reward.parse import parse_scores
from grlhf.reward.prompt import judge_messages
from grlhf.reward.rules import rule_rewards
from grlhf.rollout.base import Completion


@dataclass(frozen=True)
class JudgeCase:
    """A pair as the judge sees it: ``preferred`` is the position (1 or 2) of the chosen answer."""

    conversation: list
    preferred: int

    def log_fields(self, text: str) -> dict[str, Any]:
        """What a sample row of ``samples.jsonl`` shows of this request."""
        return {"prompt": self.conversation[-1]["content"][-1]["text"], "preferred": self.preferred}


def judge_case(pair, swap: bool, *, template: str, principles: bool = False) -> JudgeCase:
    """The judge conversation of a ``PreferencePair`` with ``chosen`` first (or second when ``swap``)."""
    first, second = (pair.rejected, pair.chosen) if swap else (pair.chosen, pair.rejected)
    messages = judge_messages(pair.question, first, second, image=as_pil(pair.image), template=template,
                              principles=pair.principles if principles else None)
    return JudgeCase(messages, 2 if swap else 1)


def sample_orders(rng: np.random.Generator, pairs: Sequence[Any], balanced: bool) -> list[tuple[Any, bool]]:
    """``(pair, swap)`` cases of a step: each pair in both orders (``balanced``), or in one random order (a
    fair coin: ``swap`` shows the chosen answer second)."""
    if balanced:
        return [(p, swap) for p in pairs for swap in (False, True)]
    return [(p, bool(s)) for p, s in zip(pairs, rng.random(len(pairs)) < 0.5)]


def judgment_rewards(texts: Sequence[str], preferred: Sequence[int], rule: str = "binary") -> tuple[np.ndarray, int]:
    """``(rewards [N], number of unparseable judgments)``."""
    failures = sum(parse_scores(t) is None for t in texts)
    return rule_rewards(texts, preferred, variant=rule), failures


@dataclass(frozen=True)
class VerdictReward:
    """Stage 1's reward: the rule reward of each sampled judgment of a ``JudgeCase``."""

    rule: str = "binary"

    def __call__(self, requests: Sequence[JudgeCase], completions: Sequence[Sequence[Completion]], *,
                 rng: np.random.Generator, step: int) -> Rewards:
        texts = [c.text for group in completions for c in group]
        preferred = [case.preferred for case, group in zip(requests, completions) for _ in group]
        rewards, failures = judgment_rewards(texts, preferred, self.rule)
        return Rewards(rewards, {"parse_failures": float(failures)})


def trace_example(item: dict, *, template: str) -> tuple[list, str]:
    """A warm-start example: the judge conversation of a synthetic trace item in its own order, and the trace."""
    messages = judge_messages(item["question"], item["response_1"], item["response_2"], image=item["image"],
                              template=template)
    return messages, item["trace"]


def answers_directly(item: dict, fraction: float, seed: int) -> bool:
    """Whether trace item ``item`` becomes a direct-answer example (a fixed draw per item and seed)."""
    return fraction > 0 and np.random.default_rng([seed, 7, int(item["id"])]).random() < fraction


def warm_start_example(item: dict, *, template: str, answer_fraction: float = 0.0, seed: int = 0
                       ) -> tuple[list, str]:
    """A trace item as a judgment example, or (``answer_fraction`` of them) as its question answered."""
    if answers_directly(item, answer_fraction, seed):
        return prompt_conversation(item["question"], item["image"]), world.answer(item["scene"], item["question"])
    return trace_example(item, template=template)


__all__ = ["JudgeCase", "VerdictReward", "answers_directly", "judge_case", "judgment_rewards", "sample_orders",
           "trace_example", "warm_start_example"]
