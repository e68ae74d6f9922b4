"""``grlhf.eval policy``: policies answer a benchmark's prompts (greedy), then a judge rates the answers.

**Pair-wise**: each answer against an opponent (the row's reference answer, or a baseline policy's answer
to the same prompt), judged in both orders. Per prompt the policy's margin is the sum over the parsed
judgments of (its score - the opponent's): > 0 a win, < 0 a loss, 0 a tie; no parsed judgment: a
failure (left out of the rates). ``win_rate = (wins + ties / 2) / judged``. **Point-wise**: a rubric
template (fields ``{question}``, ``{answer}``, ``{reference}``; ``<image>`` where the image goes) and a
regular expression whose first group is the score (its last match counts). The reward-hacking monitors
(``reward.monitors``) run on every policy's answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from grlhf.config import ConfigError
from grlhf.data.conversations import as_pil
from grlhf.data.loaders import Prompt
from grlhf.eval.output import fmt, markdown_table
from grlhf.eval.stats import group_rows, mean_interval
from grlhf.reward.evaluate import greedy_completions
from grlhf.reward.judge import Group, GroupJudge
from grlhf.reward.monitors import SELF_PRAISE_PHRASES, length_score_correlation, position_bias, self_praise_rate, \
    word_count
from grlhf.reward.prompt import IMAGE_PLACEHOLDER
from grlhf.rollout.base import Generator, SamplingParams

DEFAULT_SCORE_PATTERN = r"[Ss]core\s*[:=]?\s*\**\s*([0-9]+(?:\.[0-9]+)?)"
_RUBRIC_FIELD = re.compile(r"\{(question|answer|reference)\}")


def policy_answers(generator: Generator, prompts: Sequence[Prompt], *, max_tokens: int, batch_size: int = 32,
                   stop_token_ids: Sequence[int] = ()) -> list[str]:
    """Each prompt's greedy answer."""
    return [c.text for c in greedy_completions(generator, list(prompts), lambda p: p.conversation,
                                               max_tokens=max_tokens, batch_size=batch_size,
                                               stop_token_ids=stop_token_ids)]


@dataclass(frozen=True)
class PairwiseOutcome:
    """Per prompt: the policy's and the opponent's scores with the policy first (column 0) and second (1)."""

    policy: np.ndarray  # [P, 2]
    opponent: np.ndarray  # [P, 2]
    valid: np.ndarray  # [P, 2] bool

    @property
    def margin(self) -> np.ndarray:
        """Sum over parsed judgments of (policy - opponent); NaN where none parsed."""
        diff = np.where(self.valid, self.policy - self.opponent, 0.0).sum(axis=1)
        return np.where(self.valid.any(axis=1), diff, np.nan)


def judge_against(judge: GroupJudge, prompts: Sequence[Prompt], answers: Sequence[str],
                  opponents: Sequence[str]) -> PairwiseOutcome:
    """Every answer judged against its opponent in both orders (one batched call)."""
    groups = [Group(p.question, as_pil(p.image), [a, o]) for p, a, o in zip(prompts, answers, opponents)]
    jobs = [(g, first, 1 - first) for g in range(len(groups)) for first in (0, 1)]
    scores, valid, _ = judge.judge_pairs(groups, jobs)
    scores, valid = scores.reshape(len(groups), 2, 2), valid.reshape(len(groups), 2)
    # order 0: (policy, opponent); order 1: (opponent, policy)
    policy = np.stack([scores[:, 0, 0], scores[:, 1, 1]], axis=1)
    opponent = np.stack([scores[:, 0, 1], scores[:, 1, 0]], axis=1)
    return PairwiseOutcome(policy, opponent, valid)


def win_metrics(margin: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win / tie / loss fractions of the judged prompts, the win rate (ties half) with its interval, failures."""
    judged = margin[np.isfinite(margin)]
    points = np.where(judged > 0, 1.0, np.where(judged < 0, 0.0, 0.5))
    n = max(judged.size, 1)
    return {"prompts": int(margin.size), "judged": int(judged.size), "failures": int(margin.size - judged.size),
            "win": float((judged > 0).sum() / n), "tie": float((judged == 0).sum() / n),
            "loss": float((judged < 0).sum() / n),
            "win_rate": float(points.mean()) if judged.size else float("nan"),
            "win_rate_ci": list(mean_interval(points, resamples=resamples, seed=seed))}


def rubric_messages(template: str, question: str, answer: str, reference: Optional[str], image: Any) -> list[dict]:
    """The rubric prompt of one answer (one user turn, the image where ``<image>`` stands)."""
    values = {"question": question, "answer": answer, "reference": reference or ""}
    text = _RUBRIC_FIELD.sub(lambda m: values[m.group(1)], template)
    before, found, after = text.partition(IMAGE_PLACEHOLDER)
    if not found:
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    content = ([{"type": "text", "text": before}] if before else []) + [{"type": "image", "image": image}]
    return [{"role": "user", "content": content + ([{"type": "text", "text": after}] if after else [])}]


def check_rubric(template: str) -> str:
    """A rubric template must name ``{answer}`` (what is scored) and ``{question}``."""
    missing = {"question", "answer"} - set(_RUBRIC_FIELD.findall(template))
    if missing:
        raise ConfigError(f"the rubric template lacks the field(s) {sorted(missing)}")
    return template


def parse_rubric_score(text: str, pattern: str = DEFAULT_SCORE_PATTERN) -> Optional[float]:
    """The first group of the last match of ``pattern`` as a number; None when nothing matches."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    try:
        return float(matches[-1].group(1))
    except (IndexError, ValueError):
        return None


def rubric_scores(judge: Generator, prompts: Sequence[Prompt], answers: Sequence[str], *, template: str,
                  pattern: str, max_tokens: int, batch_size: int = 32) -> np.ndarray:
    """``[P]`` rubric scores (NaN where the judge's text has no score)."""
    requests = [rubric_messages(template, p.question, a, p.ground_truth, as_pil(p.image))
                for p, a in zip(prompts, answers)]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)
    texts = [group[0].text for start in range(0, len(requests), batch_size)
             for group in judge.generate(requests[start:start + batch_size], greedy)]
    return np.array([np.nan if (s := parse_rubric_score(t, pattern)) is None else s for t in texts], np.float64)


def monitor_metrics(answers: Sequence[str], scores: np.ndarray, first: Sequence[float] = (),
                    second: Sequence[float] = (), phrases: Sequence[str] = SELF_PRAISE_PHRASES) -> dict[str, float]:
    """The reward-hacking monitors of a policy's answers: self-praise rate, length (words) against score
    correlation, and the judge's position bias (pair-wise only)."""
    finite = np.isfinite(scores)
    lengths = np.array([word_count(a) for a in answers], np.float64)
    return {"self_praise_rate": self_praise_rate(answers, phrases),
            "length_score_correlation": length_score_correlation(lengths[finite], scores[finite]),
            "judge_position_bias": position_bias(first, second), "answer_words": float(lengths.mean())
            if len(answers) else 0.0}


def grouped_values(prompts: Sequence[Prompt], values, key: Callable[[Prompt], Optional[str]]) -> dict[str, np.ndarray]:
    """``values`` split by ``key(prompt)``, keys sorted; prompts whose key is None are left out."""
    values = np.asarray(values, np.float64)
    return {k: values[rows] for k, rows in group_rows([key(p) for p in prompts]).items()}


def by_category(prompts: Sequence[Prompt], values: np.ndarray) -> dict[str, np.ndarray]:
    """``values`` split by the prompts' categories (rows without one under ``all`` only)."""
    return grouped_values(prompts, values, lambda p: p.category)


def accuracy_by_answer(prompts: Sequence[Prompt], right: Sequence[bool]) -> dict[str, list]:
    """``{right answer: [accuracy, prompts]}``: on a world of a few answers (the toy's four colours) greedy
    accuracy moves in steps of whole answers, and this shows which ones."""
    groups = grouped_values(prompts, right, lambda p: p.ground_truth)
    return {answer: [float(oks.mean()), len(oks)] for answer, oks in groups.items()}


def category_table(results: dict[str, dict[str, Any]], key: str) -> str:
    """Rows = policies, columns = categories (MIA-Bench / LLaVA-Wild / MM-Vet style) of one benchmark."""
    categories = sorted({c for r in results.values() for c in r.get("categories", {})})
    rows = [[name, *(fmt(r["categories"].get(c, {}).get(key)) for c in categories), fmt(r[key], r.get(f"{key}_ci"))]
            for name, r in results.items()]
    return markdown_table(["policy", *categories, "all"], rows)


def table2(results: dict[str, dict[str, dict[str, Any]]], key: str) -> str:
    """The paper's Table 2 shape: rows = policies, columns = benchmarks."""
    benchmarks = list(results)
    policies = list(dict.fromkeys(p for b in results.values() for p in b))
    rows = [[p, *(fmt(results[b].get(p, {}).get(key)) for b in benchmarks)] for p in policies]
    return markdown_table(["policy", *benchmarks], rows)


__all__ = ["DEFAULT_SCORE_PATTERN", "PairwiseOutcome", "by_category", "category_table", "check_rubric",
           "judge_against", "monitor_metrics", "parse_rubric_score", "policy_answers", "rubric_messages",
           "rubric_scores", "table2", "win_metrics"]
