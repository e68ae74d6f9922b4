"""The evaluations' synthetic data: the policy warm start's errors as a preference set."""

import pytest

from grlhf.data.synthetic import SyntheticConfig, answer, parse_question, policy_warmstart
from grlhf.eval.synthetic import synthetic_error_pairs


@pytest.mark.parametrize("mode", ["systematic", "derangement"])
def test_error_pairs_hold_each_right_answer_against_the_warm_starts_wrong_one(mode):
    errors = SyntheticConfig(max_shapes=1, question_kinds=("colour",), policy_error_rate=0.6,
                                 policy_error_mode=mode)
    wrong_for = {}  # what the warm start itself says when it is wrong, by the right answer
    for item in policy_warmstart(errors, 200):
        if not item["correct"]:
            wrong_for[answer(item["scene"], parse_question(item["question"]))] = item["answer"]
    pairs = synthetic_error_pairs(errors, 4000, 48).records
    assert [p.id for p in pairs] == [str(i) for i in range(4000, 4048)]
    for pair in pairs:
        assert pair.rejected == wrong_for[pair.chosen] != pair.chosen
    assert len({p.chosen for p in pairs}) >= 3  # most of the toy's four colours
