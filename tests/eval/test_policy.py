"""Pair-wise outcomes in both orders, win rates, rubric prompts and scores, per-category splits."""

import numpy as np
import pytest
from PIL import Image

from grlhf.data.loaders import Prompt
from grlhf.eval.policy import PairwiseOutcome, accuracy_by_answer, by_category, check_rubric, judge_against, \
    monitor_metrics, parse_rubric_score, rubric_messages, win_metrics
from grlhf.reward.judge import GroupJudge
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from tests.eval.fakes import TableJudge

IMAGE = Image.new("RGB", (28, 28), "white")


def prompts(categories):
    return [Prompt(str(i), IMAGE, f"q{i}", ground_truth="ref", category=c) for i, c in enumerate(categories)]


def test_both_orders_are_judged_and_a_position_bias_cancels():
    judge = GroupJudge(TableJudge({"good": 7, "ref": 5, "same": 5, "bad": 2}, first_bonus=3),
                       template=COMPACT_JUDGE_TEMPLATE, max_tokens=8)
    outcome = judge_against(judge, prompts(["a", "a", "b"]), ["good", "same", "bad"], ["ref"] * 3)
    np.testing.assert_allclose(outcome.policy, [[10, 7], [8, 5], [5, 2]])
    np.testing.assert_allclose(outcome.opponent, [[5, 8], [5, 8], [5, 8]])
    assert outcome.margin.tolist() == [4.0, 0.0, -6.0]  # win, tie (the bonus cancels), loss
    m = win_metrics(outcome.margin, resamples=20)
    assert (m["win"], m["tie"], m["loss"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert m["win_rate"] == pytest.approx(0.5) and m["failures"] == 0
    split = by_category(prompts(["a", "a", "b"]), outcome.margin)
    assert split["a"].tolist() == [4.0, 0.0] and split["b"].tolist() == [-6.0]


def test_unparsed_prompts_are_failures_not_losses():
    outcome = PairwiseOutcome(np.array([[5.0, 5], [1, 1]]), np.array([[3.0, 3], [9, 9]]),
                              np.array([[False, False], [True, False]]))
    assert np.isnan(outcome.margin[0]) and outcome.margin[1] == -8
    m = win_metrics(outcome.margin, resamples=0)
    assert m["judged"] == 1 and m["failures"] == 1 and m["win_rate"] == 0.0


def test_rubric_prompt_and_score_parsing():
    template = check_rubric("Question: {question}\n<image>Answer: {answer}\nReference: {reference}\nScore 1-10.")
    messages = rubric_messages(template, "what?", "red {answer}", "blue", IMAGE)
    content = messages[0]["content"]
    assert [part["type"] for part in content] == ["text", "image", "text"]
    assert content[2]["text"].startswith("Answer: red {answer}\nReference: blue")  # braces in texts stay as they are
    with pytest.raises(ValueError, match="answer"):
        check_rubric("Question: {question}")
    assert parse_rubric_score("Reasoning... Score: 3. Final Score: **8**") == 8.0
    assert parse_rubric_score("rating [[7]]", r"\[\[(\d+)\]\]") == 7.0
    assert parse_rubric_score("no number") is None


def test_monitors_of_a_policy_s_answers():
    answers = ["red", "blue, and this answer is correct", "a longer answer with many words in it"]
    m = monitor_metrics(answers, np.array([1.0, np.nan, 3.0]), [6, 7], [5, 5])
    assert m["self_praise_rate"] == pytest.approx(1 / 3) and m["judge_position_bias"] == pytest.approx(1.5)
    assert m["length_score_correlation"] == pytest.approx(1.0)  # the two scored answers: longer, higher


def test_accuracy_by_answer_groups_the_prompts_by_their_right_answer():
    image = Image.new("RGB", (8, 8))
    prompts = [Prompt(str(i), image, "What colour?", ground_truth=truth)
               for i, truth in enumerate(["red", "blue", "red", "red", "blue"])]
    assert accuracy_by_answer(prompts, [True, False, False, True, False]) == {
        "blue": [0.0, 2], "red": [pytest.approx(2 / 3), 3]}
