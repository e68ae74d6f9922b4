"""``grlhf.eval judge``: pairwise accuracy of judges on preference sets, each pair in both orders.

A GRM (any HF directory or served model) judges each pair with the better answer first and second; a
case is *correct* when the better answer gets the strictly higher score, a *tie* when both scores are
equal, a *failure* when the text does not parse (ties and failures count as wrong). The score-only RM
scores each answer on its own, so its two orders agree (position bias 0). Intervals: percentile bootstrap
over pairs (both orders of a pair stay together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from grlhf.config import ConfigError
from grlhf.data.conversations import prompt_conversation
from grlhf.data.loaders import PAIR_FORMATS, PreferencePair
from grlhf.eval.output import fmt, markdown_table
from grlhf.eval.stats import bootstrap_interval, group_rows
from grlhf.reward.evaluate import greedy_completions
from grlhf.reward.parse import parse_scores
from grlhf.reward.score_model import score_answers
from grlhf.reward.verdicts import judge_case
from grlhf.rollout.base import Generator


@dataclass(frozen=True)
class Outcomes:
    """Per pair and order (column 0: better answer first, 1: second): correct, tie, parse failure."""

    correct: np.ndarray  # [P, 2] bool
    tie: np.ndarray  # [P, 2] bool
    failed: np.ndarray  # [P, 2] bool

    def take(self, rows: Sequence[int]) -> "Outcomes":
        """The outcomes of pairs ``rows`` only."""
        rows = np.asarray(rows, int)
        return Outcomes(self.correct[rows], self.tie[rows], self.failed[rows])


def verdict_outcomes(texts: Sequence[str], preferred: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(correct, tie, failed)`` of judgments ``texts`` whose better answer sits at position ``preferred``."""
    parsed = [parse_scores(t) for t in texts]
    failed = np.array([p is None for p in parsed], bool)
    tie = np.array([p is not None and p[0] == p[1] for p in parsed], bool)
    correct = np.array([p is not None and (p[0] > p[1] if want == 1 else p[1] > p[0])
                        for p, want in zip(parsed, preferred)], bool)
    return correct, tie, failed


def grm_outcomes(generator: Generator, pairs: Sequence[PreferencePair], *, template: str, max_tokens: int,
                 batch_size: int = 32, principles: bool = False, stop_token_ids: Sequence[int] = ()) -> Outcomes:
    """Greedy judgments of every pair in both orders."""
    cases = [judge_case(p, swap, template=template, principles=principles) for swap in (False, True) for p in pairs]
    texts = [c.text for c in greedy_completions(generator, cases, lambda c: c.conversation, max_tokens=max_tokens,
                                                batch_size=batch_size, stop_token_ids=stop_token_ids)]
    correct, tie, failed = verdict_outcomes(texts, [c.preferred for c in cases])
    half = len(pairs)
    return Outcomes(*(np.stack([a[:half], a[half:]], axis=1) for a in (correct, tie, failed)))


def rm_outcomes(model, processor, pairs: Sequence[PreferencePair], *, length_buckets: Sequence[int],
                batch_size: int = 32) -> Outcomes:
    """The score-only RM: each answer scored alone; correct when the chosen one scores strictly higher."""
    if not pairs:
        none = np.zeros((0, 2), bool)
        return Outcomes(none, none, none)
    conversations = [prompt_conversation(p.question, p.image) for p in pairs]
    scores = score_answers(model, processor, conversations * 2, [p.chosen for p in pairs] +
                           [p.rejected for p in pairs], batch_size=batch_size, length_buckets=length_buckets)
    chosen, rejected = scores[:len(pairs)], scores[len(pairs):]
    both = lambda a: np.stack([a, a], axis=1)  # noqa: E731  (one score per answer: the orders agree)
    return Outcomes(both(chosen > rejected), both(chosen == rejected), both(np.zeros(len(pairs), bool)))


def judge_metrics(outcomes: Outcomes, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy (overall, better first, better second), position bias, tie and parse-failure rates, each
    with a bootstrap 95% interval over pairs."""
    correct = outcomes.correct.astype(np.float64)
    statistics = {
        "accuracy": lambda idx: correct[idx].mean(),
        "accuracy_first": lambda idx: correct[idx, 0].mean(),
        "accuracy_second": lambda idx: correct[idx, 1].mean(),
        "position_bias": lambda idx: correct[idx, 0].mean() - correct[idx, 1].mean(),
        "tie_rate": lambda idx: outcomes.tie[idx].mean(),
        "parse_failure_rate": lambda idx: outcomes.failed[idx].mean(),
    }
    pairs = len(correct)
    out: dict[str, Any] = {"pairs": pairs, "cases": 2 * pairs}
    everyone = np.arange(pairs)
    for name, statistic in statistics.items():
        out[name] = float(statistic(everyone)) if pairs else float("nan")
        out[f"{name}_ci"] = list(bootstrap_interval(lambda idx: float(statistic(idx)), pairs, resamples=resamples,
                                                    seed=seed))
    return out


def split_metrics(outcomes: Outcomes, keys: Sequence[str], *, resamples: int = 1000, seed: int = 0
                  ) -> dict[str, dict[str, Any]]:
    """``judge_metrics`` of each key's pairs (``keys[i]``: pair i's), in sorted key order."""
    return {key: judge_metrics(outcomes.take(rows), resamples=resamples, seed=seed)
            for key, rows in group_rows(keys).items()}


def parse_set_spec(spec: str) -> tuple[str, str, str]:
    """``name=path[:format]`` -> ``(name, path, format)``; the format defaults to ``align_anything``."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"a preference set is name=path[:format], got {spec!r}")
    path, colon, format = rest.rpartition(":")
    if not colon or format not in PAIR_FORMATS:
        path, format = rest, "align_anything"
    return name, path, format


def parse_named(specs: Sequence[str], what: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}``; a bare ``x`` is named by itself."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name, value = (name, value) if sep else (spec, spec)
        if not name or not value:
            raise ConfigError(f"a {what} is name=value, got {spec!r}")
        if name in out:
            raise ConfigError(f"{what} name {name!r} given twice")
        out[name] = value
    return out


def judge_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per (judge, set): accuracy, by order, position bias, ties, parse failures (with intervals)."""
    header = ["judge", "set", "pairs", "accuracy", "better first", "better second", "position bias", "ties",
              "parse failures"]
    rows = []
    for judge, sets in results.items():
        for name, m in sets.items():
            rows.append([judge, name, m["pairs"], *(fmt(m[k], m[f"{k}_ci"]) for k in (
                "accuracy", "accuracy_first", "accuracy_second", "position_bias", "tie_rate", "parse_failure_rate"))])
    return markdown_table(header, rows)


__all__ = ["Outcomes", "grm_outcomes", "judge_metrics", "judge_table", "parse_named", "parse_set_spec",
           "rm_outcomes", "split_metrics", "verdict_outcomes"]
