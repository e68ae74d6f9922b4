"""S(y_i) by grouped comparison and against an anchor, and their correlation with human scores."""

import numpy as np
import pytest
from PIL import Image

from grlhf.eval.pointwise import ScoredGroup, anchored_scores, correlation_metrics, grouped_scores
from grlhf.reward.judge import GroupJudge
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from tests.eval.fakes import TableJudge

IMAGE = Image.new("RGB", (28, 28), "white")
TABLE = {"great": 9, "fine": 6, "poor": 2, "awful": 1}


def groups():
    return [ScoredGroup("q1", IMAGE, ["fine", "great", "poor"], [3, 5, 1]),
            ScoredGroup("q2", IMAGE, ["awful", "great", "fine", "poor"], [1, 5, 4, 2]),
            ScoredGroup("q3", IMAGE, ["poor", "great"], [2, 4], reference="fine")]


def judge(**kw):
    return GroupJudge(TableJudge(TABLE, **kw), template=COMPACT_JUDGE_TEMPLATE, max_tokens=8)


def test_grouped_scores_follow_the_formula_and_cancel_a_position_bias():
    scores = grouped_scores(judge(first_bonus=2), groups())
    # S(y_i) = the mean of its own score over both orders: the table value + half the first-position bonus
    np.testing.assert_allclose(scores[0], [7, 10, 3])
    np.testing.assert_allclose(scores[1], [2, 10, 7, 3])
    metrics = correlation_metrics(groups(), scores, resamples=30)
    predicted, human = [7, 10, 3, 2, 10, 7, 3, 3, 10], [3, 5, 1, 1, 5, 4, 2, 2, 4]
    assert metrics["pearson"] == pytest.approx(np.corrcoef(predicted, human)[0, 1])
    assert metrics["scored"] == 9 and metrics["questions"] == 3
    low, high = metrics["pearson_ci"]
    assert -1 <= low <= high <= 1


def test_anchored_scores_skip_the_anchor_or_use_the_reference():
    scores = anchored_scores(judge(), groups())
    assert np.isnan(scores[0][0]) and scores[0][1:].tolist() == [9, 2]  # anchor: the first answer
    assert scores[2].tolist() == [2, 9]  # anchor: the reference answer, so both answers are scored
    metrics = correlation_metrics(groups(), scores, resamples=0)
    assert metrics["unscored"] == 2 and metrics["scored"] == 7


def test_unparsed_judgments_leave_answers_unscored():
    broken = GroupJudge(TableJudge(text="no verdict"), template=COMPACT_JUDGE_TEMPLATE, max_tokens=8)
    metrics = correlation_metrics(groups(), grouped_scores(broken, groups()), resamples=10)
    assert metrics["scored"] == 0 and metrics["pearson"] is not None and np.isnan(metrics["pearson"])
