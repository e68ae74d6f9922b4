"""The evaluations' synthetic data: the policy warm start's errors as preference sets."""

from grlhf.data.synthetic import SyntheticConfig, answer, parse_question, policy_warmstart
from grlhf.eval.synthetic import synthetic_error_pairs

SYSTEMATIC = SyntheticConfig(max_shapes=1, question_kinds=("colour",), policy_error_rate=0.6,
                             policy_error_mode="systematic")


def test_error_pairs_hold_each_right_answer_against_the_warm_starts_wrong_one():
    wrong_for = {}  # what the warm start itself says when it is wrong, by the right answer
    for item in policy_warmstart(SYSTEMATIC, 200):
        if not item["correct"]:
            wrong_for[answer(item["scene"], parse_question(item["question"]))] = item["answer"]
    sets = synthetic_error_pairs(SYSTEMATIC, 4000, 48)
    assert list(sets) == sorted(sets) and 2 <= len(sets) <= 4  # the toy's four colours
    ids = []
    for name, data in sets.items():
        right, wrong = name.split(" > ")
        assert wrong_for[right] == wrong and right != wrong
        for pair in data.records:
            assert (pair.chosen, pair.rejected) == (right, wrong)
            ids.append(pair.id)
    assert sorted(ids, key=int) == [str(i) for i in range(4000, 4048)]


def test_error_pairs_fall_back_to_one_set_past_max_sets():
    sets = synthetic_error_pairs(SYSTEMATIC, 4000, 48, max_sets=1)
    assert list(sets) == ["right > the warm start's wrong answer"]
    assert len(sets["right > the warm start's wrong answer"].records) == 48
