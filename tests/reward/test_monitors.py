"""The reward-hacking monitors' math on hand-made answers and scores."""

import numpy as np
import pytest

from grlhf.reward.monitors import ends_with_self_praise, length_score_correlation, position_bias, rising, \
    self_praise_rate, word_count


def test_self_praise_is_found_only_at_the_end():
    praising = "The circle is red. This answer is correct and complete."
    early = "This answer is correct, I said. " + "More text follows here. " * 20
    assert ends_with_self_praise(praising)
    assert not ends_with_self_praise(early)  # the phrase is outside the tail
    assert self_praise_rate([praising, "red", early, "Blue. I am confident in it."]) == 0.5
    assert self_praise_rate(["red. Truly great."], phrases=["truly great"]) == 1.0
    assert self_praise_rate([]) == 0.0


def test_length_score_correlation_matches_numpy():
    rng = np.random.default_rng(0)
    lengths, scores = rng.integers(1, 50, 40), rng.normal(size=40)
    assert length_score_correlation(lengths, scores) == pytest.approx(np.corrcoef(lengths, scores)[0, 1])
    assert length_score_correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert length_score_correlation([1, 2, 3], [5, 5, 5]) == 0.0  # a constant side: no evidence
    with pytest.raises(ValueError, match="shape"):
        length_score_correlation([1, 2], [1, 2, 3])


def test_position_bias_and_drift():
    assert position_bias([8, 6], [5, 3]) == pytest.approx(3.0)
    assert position_bias([], []) == 0.0
    assert rising([0.0, 0.0, 0.1, 0.2, 0.5, 0.6], threshold=0.2)
    assert not rising([0.5, 0.4, 0.5, 0.4, 0.5, 0.4], threshold=0.05)
    assert not rising([0.9], threshold=0.0)
    assert word_count("  two\nwords ") == 2
