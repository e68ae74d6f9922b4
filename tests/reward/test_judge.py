"""The group judge with a scripted fake backend: every order built, scores in the right cells, failures masked."""

import re

import numpy as np
import pytest

from grlhf.reward.judge import Group, GroupJudge, requested_pairs
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.rollout.base import Completion


class ScriptedJudge:
    """Scores each answer by a hidden value (+ a first-position bias); answers containing 'garbled' fail."""

    def __init__(self, values: dict[str, float], first_bias: float = 0.0):
        self.values, self.first_bias, self.calls, self.seen = values, first_bias, 0, []

    def generate(self, requests, sampling):
        self.calls += 1
        out = []
        for request in requests:
            text = "".join(part.get("text", "") for part in request[0]["content"] if part["type"] == "text")
            first = re.search(r"# Response 1: (.*)\n", text).group(1)
            second = re.search(r"# Response 2: (.*)\n", text).group(1)
            self.seen.append((first, second))
            if "garbled" in (first + second):
                body = "Scores: none"
            else:
                scores = f"{self.values[first] + self.first_bias}, {self.values[second]}"
                body = f"Analysis: ...\nScores: \\boxed{{{scores}}}"
            out.append([Completion([1, 2, 3], [0.0] * 3, body, "stop") for _ in range(sampling.n)])
        return out

    def metrics(self) -> dict[str, float]:
        return {"scripted_calls": float(self.calls)}


def _judge(backend, **kw):
    return GroupJudge(backend, template=COMPACT_JUDGE_TEMPLATE, **kw)


def test_requested_pairs():
    np.testing.assert_array_equal(requested_pairs([True] * 3), ~np.eye(3, dtype=bool))
    np.testing.assert_array_equal(requested_pairs([True] * 3, both_orders=False), np.triu(np.ones((3, 3), bool), 1))
    assert not requested_pairs([True, False, True])[1].any() and not requested_pairs([True, False, True])[:, 1].any()


def test_every_ordered_pair_is_judged_in_one_call_and_bias_cancels():
    values = {"a": 2.0, "b": 5.0, "c": 8.0}
    backend = ScriptedJudge(values, first_bias=3.0)
    result = _judge(backend)([Group("q?", None, ["a", "b", "c"])])
    assert backend.calls == 1
    assert sorted(backend.seen) == sorted((x, y) for x in "abc" for y in "abc" if x != y)
    # S(y_i) = mean of the scores y_i received: its value + half the bias (first in half its judgments)
    np.testing.assert_allclose(result.scores[0], [2.0 + 1.5, 5.0 + 1.5, 8.0 + 1.5])
    assert result.pair_scores[0, 0, 2].tolist() == [5.0, 8.0] and result.pair_scores[0, 2, 0].tolist() == [11.0, 2.0]
    assert result.metrics["judge_calls"] == 6 and result.metrics["judge_position_bias"] == pytest.approx(3.0)


def test_one_order_judges_each_unordered_pair_once():
    backend = ScriptedJudge({"a": 1.0, "b": 4.0, "c": 9.0})
    result = _judge(backend, both_orders=False)([Group("q?", None, ["a", "b", "c"])])
    assert sorted(backend.seen) == [("a", "b"), ("a", "c"), ("b", "c")]
    np.testing.assert_allclose(result.scores[0], [1.0, 4.0, 9.0])


def test_failed_judgments_are_masked_and_counted():
    backend = ScriptedJudge({"a": 3.0, "b": 7.0, "garbled": 0.0})
    result = _judge(backend)([Group("q?", None, ["a", "b", "garbled"])])
    assert result.metrics["judge_failures"] == 4 and not result.pair_valid[0, :, 2].any()
    np.testing.assert_allclose(result.scores[0], [3.0, 7.0, 0.0])  # the garbled answer has no valid score


def test_incomplete_answers_are_excluded_and_get_the_configured_score():
    backend = ScriptedJudge({"a": 3.0, "b": 7.0, "c": 5.0})
    result = _judge(backend, incomplete_score=-1.0)([Group("q?", None, ["a", "b", "c"], [True, False, True])])
    assert all("b" not in pair for pair in backend.seen) and len(backend.seen) == 2
    np.testing.assert_allclose(result.scores[0], [3.0, -1.0, 5.0])
    assert result.metrics["incomplete_answers"] == 1 and result.metrics["judge_not_called"] == 0.0


def test_a_step_with_every_answer_truncated_says_the_judge_was_not_called(caplog):
    backend = ScriptedJudge({"a": 3.0, "b": 7.0})
    groups = [Group("q?", None, ["a", "b"], [False, False]), Group("r?", None, ["a", "b"], [True, False])]
    with caplog.at_level("WARNING", logger="grlhf.reward"):
        result = _judge(backend, incomplete_score=-1.0)(groups, step=4)
    assert backend.calls == 0 and result.metrics["judge_calls"] == 0.0
    assert result.metrics["judge_not_called"] == 1.0
    assert "step 4: the judge was not called" in caplog.text
    np.testing.assert_allclose(result.scores, [[-1.0, -1.0], [-1.0, -1.0]])


def test_several_groups_and_samples_are_batched_and_averaged():
    backend = ScriptedJudge({"a": 1.0, "b": 2.0, "x": 6.0, "y": 3.0})
    result = _judge(backend, samples=3, max_batch=3)([Group("q?", None, ["a", "b"]), Group("r?", None, ["x", "y"])])
    assert backend.calls == 2  # 4 requests in chunks of 3
    np.testing.assert_allclose(result.scores, [[1.0, 2.0], [6.0, 3.0]])
    assert result.metrics["judge_calls"] == 12


def test_groups_must_have_equal_size():
    with pytest.raises(ValueError, match="same number of answers"):
        _judge(ScriptedJudge({}))([Group("q", None, ["a"]), Group("q", None, ["a", "b"])])


def test_single_opponent_judges_each_answer_once():
    backend = ScriptedJudge({"a": 2.0, "b": 5.0, "c": 8.0})
    result = _judge(backend).single([Group("q?", None, ["a", "b", "c"])], np.random.default_rng(0))
    assert len(backend.seen) == 3 and backend.calls == 1
    np.testing.assert_allclose(result.scores[0], [2.0, 5.0, 8.0])  # no bias: each keeps its own score
    assert 2 <= result.requested.sum() <= 3  # two answers may pick each other in the same order
