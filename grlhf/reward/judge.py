"""The group judge: every ordered pair of a prompt's k answers judged by a GRM, turned into S(y_i).

For each group the judge prompts of all requested pairs (``i`` first, ``j`` second; every ordered pair,
or each unordered pair once with ``both_orders=False``) go to the judge backend in one batched call
(chunked by ``max_batch``). Parsed scores fill ``pair_scores [G, k, k, 2]`` and ``pair_valid [G, k, k]``;
``rl.grouped_comparison`` averages them. An incomplete answer (no stop token within the budget) is left
out of every comparison and gets ``incomplete_score``; a judgment that does not parse is masked and
counted. With ``samples > 1`` each pair is judged that many times (sampled) and the parsed scores averaged.
A step with no pair to judge (fewer than two complete answers in every group) never calls the backend: its
metrics say ``judge_not_called=1`` and a warning is logged, so a judge that is never exercised is visible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from grlhf.data.conversations import as_pil
from grlhf.data.loaders import Prompt
from grlhf.reward.base import Rewards, complete_mask
from grlhf.reward.parse import parse_scores
from grlhf.reward.prompt import DEFAULT_JUDGE_TEMPLATE, judge_messages
from grlhf.rl.grouped import grouped_comparison
from grlhf.rollout.base import Completion, SamplingParams

log = logging.getLogger("grlhf.reward")


@dataclass
class Group:
    """One prompt's answers to be compared."""

    question: str
    image: Any
    answers: Sequence[str]
    complete: Optional[Sequence[bool]] = None  # default: all complete


@dataclass
class JudgeResult:
    scores: np.ndarray  # [G, k] S(y_i); incomplete answers get incomplete_score
    pair_scores: np.ndarray  # [G, k, k, 2]
    pair_valid: np.ndarray  # [G, k, k]
    requested: np.ndarray  # [G, k, k]
    metrics: dict[str, float] = field(default_factory=dict)


def requested_pairs(complete: Sequence[bool], both_orders: bool = True) -> np.ndarray:
    """``[k, k]``: the ordered pairs to judge; none involving an incomplete answer, none on the diagonal."""
    ok = np.asarray(complete, bool)
    k = len(ok)
    mask = ~np.eye(k, dtype=bool) & ok[:, None] & ok[None, :]
    return mask if both_orders else np.triu(mask, 1)


class GroupJudge:
    """Grouped comparison with a judge backend (``generate(requests, sampling)``, see ``rollout.base``)."""

    def __init__(self, backend, *, template: str = DEFAULT_JUDGE_TEMPLATE, both_orders: bool = True,
                 samples: int = 1, temperature: float = 1.0, max_tokens: int = 512, incomplete_score: float = 0.0,
                 max_batch: int = 256, seed: int = 0):
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.backend, self.template, self.both_orders = backend, template, both_orders
        self.samples, self.temperature, self.max_tokens = samples, temperature, max_tokens
        self.incomplete_score, self.max_batch, self.seed = incomplete_score, max_batch, seed

    def sampling(self, call: int) -> SamplingParams:
        """Greedy for one sample per pair, else ``samples`` draws at ``temperature``."""
        temperature = 0.0 if self.samples == 1 else self.temperature
        return SamplingParams(n=self.samples, temperature=temperature, max_tokens=self.max_tokens,
                              seed=self.seed + call)

    def requests(self, groups: Sequence[Group], jobs: Sequence[tuple[int, int, int]]) -> list[list[dict]]:
        """The judge prompt (a chat conversation with the group's image) of each ``(group, first, second)``."""
        return [judge_messages(groups[gi].question, groups[gi].answers[i], groups[gi].answers[j],
                               image=groups[gi].image, template=self.template) for gi, i, j in jobs]

    def judge_pairs(self, groups: Sequence[Group], jobs: Sequence[tuple[int, int, int]], *, step: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Judge ``(group, first answer, second answer)`` triples: ``(scores [P, 2], valid [P], counts)``;
        with several samples per pair the valid parses are averaged."""
        requests = self.requests(groups, jobs)
        completions = []
        for call, start in enumerate(range(0, len(requests), self.max_batch)):
            completions.extend(self.backend.generate(requests[start:start + self.max_batch],
                                                     self.sampling(step * 1_000_003 + call)))
        scores = np.zeros((len(jobs), 2), np.float32)
        valid = np.zeros(len(jobs), bool)
        failures = tokens = 0
        for index, samples in enumerate(completions):
            parsed = [parse_scores(c.text) for c in samples]
            tokens += sum(len(c.token_ids) for c in samples)
            good = [p for p in parsed if p is not None]
            failures += len(parsed) - len(good)
            if good:
                scores[index], valid[index] = np.mean(np.asarray(good, np.float32), axis=0), True
        calls = len(jobs) * self.samples
        if not jobs:
            log.warning("step %d: the judge was not called: no group had two complete answers to compare (every "
                        "answer got reward.incomplete_score)", step)
        return scores, valid, {"judge_calls": float(calls), "judge_tokens": float(tokens),
                               "judge_failures": float(failures), "judge_failure_rate": failures / max(calls, 1),
                               "judge_not_called": float(not jobs)}

    def __call__(self, groups: Sequence[Group], *, step: int = 0) -> JudgeResult:
        k = max(len(g.answers) for g in groups)
        if any(len(g.answers) != k for g in groups):
            raise ValueError("every group must have the same number of answers")
        requested = np.stack([requested_pairs(g.complete if g.complete is not None else [True] * k,
                                              self.both_orders) for g in groups])
        jobs = [(gi, int(i), int(j)) for gi in range(len(groups)) for i, j in zip(*np.nonzero(requested[gi]))]
        scores, valid, counts = self.judge_pairs(groups, jobs, step=step)
        pair_scores = np.zeros((len(groups), k, k, 2), np.float32)
        pair_valid = np.zeros((len(groups), k, k), bool)
        for (gi, i, j), score, ok in zip(jobs, scores, valid):
            pair_scores[gi, i, j], pair_valid[gi, i, j] = score, ok
        S, _ = grouped_comparison(pair_scores, pair_valid, both_orders=self.both_orders,
                                  empty_score=self.incomplete_score)
        S = np.asarray(S)
        complete = np.stack([np.asarray(g.complete if g.complete is not None else [True] * k, bool) for g in groups])
        S = np.where(complete, S, self.incomplete_score)
        judged = pair_valid & requested
        metrics = {**counts, "judge_first_score": float(pair_scores[..., 0][judged].mean()) if judged.any() else 0.0,
                   "judge_second_score": float(pair_scores[..., 1][judged].mean()) if judged.any() else 0.0,
                   "incomplete_answers": float((~complete).sum())}
        metrics["judge_position_bias"] = metrics["judge_first_score"] - metrics["judge_second_score"]
        return JudgeResult(S, pair_scores, pair_valid, requested, metrics)

    def single(self, groups: Sequence[Group], rng: np.random.Generator, *, step: int = 0) -> JudgeResult:
        """The ablation without grouped comparison: each complete answer is judged once against one random
        other complete answer of its group (shown first or second at random) and keeps the score it got."""
        k = len(groups[0].answers)
        jobs, owners = [], []
        for gi, g in enumerate(groups):
            complete = np.asarray(g.complete if g.complete is not None else [True] * k, bool)
            for i in np.flatnonzero(complete):
                others = [j for j in np.flatnonzero(complete) if j != i]
                if others:
                    j = int(rng.choice(others))
                    first = bool(rng.random() < 0.5)
                    jobs.append((gi, int(i), j) if first else (gi, j, int(i)))
                    owners.append((gi, int(i), 0 if first else 1))
        scores, valid, counts = self.judge_pairs(groups, jobs, step=step)
        S = np.full((len(groups), k), self.incomplete_score, np.float32)
        requested = np.zeros((len(groups), k, k), bool)
        pair_scores = np.zeros((len(groups), k, k, 2), np.float32)
        pair_valid = np.zeros((len(groups), k, k), bool)
        for (gi, a, b), (_, i, slot), score, ok in zip(jobs, owners, scores, valid):
            requested[gi, a, b], pair_scores[gi, a, b], pair_valid[gi, a, b] = True, score, ok
            if ok:
                S[gi, i] = score[slot]
        first, second = scores[valid, 0], scores[valid, 1]
        metrics = {**counts, "judge_first_score": float(first.mean()) if first.size else 0.0,
                   "judge_second_score": float(second.mean()) if second.size else 0.0,
                   "incomplete_answers": float(sum(k - sum(g.complete if g.complete is not None else [True] * k)
                                                   for g in groups))}
        metrics["judge_position_bias"] = metrics["judge_first_score"] - metrics["judge_second_score"]
        return JudgeResult(S, pair_scores, pair_valid, requested, metrics)


@dataclass
class GroupReward:
    """Stage 2's reward from a GRM: S(y_i) by grouped comparison of each prompt's answers, or (``single``,
    the ablation) each answer judged against one random other."""

    judge: GroupJudge
    single: bool = False

    def __call__(self, requests: Sequence[Prompt], completions: Sequence[Sequence[Completion]], *,
                 rng: np.random.Generator, step: int) -> Rewards:
        complete = complete_mask(completions)
        groups = [Group(p.question, as_pil(p.image), [c.text for c in group], oks)
                  for p, group, oks in zip(requests, completions, complete)]
        result = self.judge.single(groups, rng, step=step) if self.single else self.judge(groups, step=step)
        # the judge engine's own counters (e.g. a remote endpoint's requests and retries), named apart from
        # the rollout engine's
        engine = {f"judge_{key}": value for key, value in self.judge.backend.metrics().items()}
        return Rewards(result.scores.reshape(-1).astype(np.float32), {**result.metrics, **engine})


__all__ = ["Group", "GroupJudge", "GroupReward", "JudgeResult", "requested_pairs"]
