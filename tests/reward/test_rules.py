"""rule_reward: the GRM's RL reward (released code: 1/0; paper §3 text: +1/-1)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from grlhf.reward import rule_reward, rule_rewards


@pytest.mark.parametrize("text,preferred,binary,signed", [
    (r"\boxed{8, 5}", 1, 1.0, 1.0),
    (r"\boxed{8, 5}", 2, 0.0, -1.0),
    (r"\boxed{3, 9}", 2, 1.0, 1.0),
    (r"\boxed{7, 7}", 1, 0.0, -1.0),  # a tie is not a preference
    (r"\boxed{7, 7}", 2, 0.0, -1.0),
    ("I cannot decide", 1, 0.0, -1.0),
    (r"\boxed{1, 2, 3}", 2, 0.0, -1.0),
])
def test_rule_reward(text, preferred, binary, signed):
    assert rule_reward(text, preferred) == binary
    assert rule_reward(text, preferred, variant="signed") == signed


def test_bad_labels_and_variants():
    with pytest.raises(ValueError, match="preferred must be 1 or 2"):
        rule_reward(r"\boxed{1, 2}", 0)
    for label in (True, False, 1.0, "1", None):  # True == 1 would silently read as position 1
        with pytest.raises(TypeError, match="preferred must be the int 1 or 2"):
            rule_reward(r"\boxed{8, 5}", label)
    assert rule_reward(r"\boxed{8, 5}", np.int64(1)) == 1.0  # numpy labels are integers
    with pytest.raises(ValueError, match="unknown rule variant"):
        rule_reward(r"\boxed{1, 2}", 1, variant="ternary")
    with pytest.raises(ValueError, match="2 judgments but 1 labels"):
        rule_rewards(["a", "b"], [1])


def test_batch():
    out = rule_rewards([r"\boxed{8, 5}", r"\boxed{8, 5}", "junk"], [1, 2, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 0.0, 0.0])


@given(st.integers(1, 10), st.integers(1, 10), st.sampled_from([1, 2]))
def test_swapping_the_answers_keeps_the_reward(a, b, preferred):
    # Showing the pair in the other order (label following) must not change the reward.
    assert rule_reward(rf"\boxed{{{a}, {b}}}", preferred) == rule_reward(rf"\boxed{{{b}, {a}}}", 3 - preferred)
