"""Stage 1's requests and reward: preference pairs as judge prompts, and the rule reward on verdicts.

A pair is shown with its chosen answer first or second (``swap``); the label follows the order. The
rule reward (``reward.rules``) scores each sampled judgment; unparseable judgments get the rule's low
value and are counted. The GRM's warm-start examples are built here too: synthetic judgment traces (and,
with ``answer_fraction``, the pair's question answered directly), or, on real preference files, verdict
targets derived from the label and the dataset's principles and scores (``verdict_target``).
"""

from __future__ import annotations

import zlib
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


def judge_conversation(pair, swap: bool, *, template: str, principles: bool = False, image: Any = None) -> list:
    """The judge conversation of a ``PreferencePair`` with ``chosen`` first (or second when ``swap``); the
    pair's principles shown when ``principles``. ``image``: what stands in the image item (default: the
    pair's lazy image itself, enough to measure the prompt without decoding it)."""
    first, second = (pair.rejected, pair.chosen) if swap else (pair.chosen, pair.rejected)
    return judge_messages(pair.question, first, second, image=pair.image if image is None else image,
                          template=template, principles=pair.principles if principles else None)


def judge_case(pair, swap: bool, *, template: str, principles: bool = False) -> JudgeCase:
    """The judge conversation of a ``PreferencePair`` (the image decoded) and the chosen answer's position."""
    messages = judge_conversation(pair, swap, template=template, principles=principles, image=as_pil(pair.image))
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


def answer_example(item: dict) -> tuple[list, str]:
    """A trace item's question answered directly: the image and the question, and the world's right answer."""
    return prompt_conversation(item["question"], item["image"]), world.answer(item["scene"], item["question"])


def warm_start_example(item: dict, *, template: str, answer_fraction: float = 0.0, seed: int = 0
                       ) -> tuple[list, str]:
    """A trace item as a judgment example, or (``answer_fraction`` of them) as its question answered."""
    if answers_directly(item, answer_fraction, seed):
        return answer_example(item)
    return trace_example(item, template=template)


# GRM+SFT on real preference files: the scores of the chosen and the rejected answer when the dataset has none
LABEL_SCORES = (8.0, 3.0)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def verdict_target(pair, swap: bool, *, label_scores: tuple[float, float] = LABEL_SCORES) -> str:
    """The judgment GRM+SFT learns for ``pair`` shown in this order (chosen second when ``swap``)::

        Specific Criteria: <the pair's principles, on one line>      (only when it has principles)
        Analysis: Response <p> is better than Response <q>.
        Scores: \\boxed{<score of response 1>, <score of response 2>}

    The scores are the dataset's (``pair.scores``: chosen, rejected) or ``label_scores``; the rule reward
    gives this text 1.
    """
    chosen, rejected = pair.scores if pair.scores is not None else label_scores
    better, worse = (2, 1) if swap else (1, 2)
    first, second = (rejected, chosen) if swap else (chosen, rejected)
    lines = [f"Specific Criteria: {' '.join(pair.principles.split())}"] if pair.principles else []
    lines += [f"Analysis: Response {better} is better than Response {worse}.",
              f"Scores: \\boxed{{{_number(first)}, {_number(second)}}}"]
    return "\n".join(lines)


def shown_second(pair, seed: int) -> bool:
    """The fixed order of ``pair`` in GRM+SFT (a fair coin per pair id and seed): chosen second when True."""
    return bool(np.random.default_rng([seed, 13, zlib.crc32(pair.id.encode())]).random() < 0.5)


def verdict_example(pair, *, template: str, principles: bool = False, seed: int = 0) -> tuple[list, str]:
    """A GRM+SFT example of a real preference pair: its judge conversation in a fixed random order and
    ``verdict_target`` for that order."""
    swap = shown_second(pair, seed)
    return (judge_conversation(pair, swap, template=template, principles=principles, image=as_pil(pair.image)),
            verdict_target(pair, swap))


__all__ = ["LABEL_SCORES", "JudgeCase", "VerdictReward", "answer_example", "answers_directly", "judge_case",
           "judge_conversation", "judgment_rewards", "sample_orders", "shown_second", "trace_example", "verdict_example",
           "verdict_target", "warm_start_example"]
