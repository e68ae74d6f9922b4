"""parse_scores: the last \\boxed{a, b}, tolerant of formatting, None for anything malformed."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grlhf.reward import parse_scores


@pytest.mark.parametrize("text,expected", [
    (r"Scores: \boxed{8, 5}", (8.0, 5.0)),
    (r"Scores:\boxed{ 7.5 ,  9 }.", (7.5, 9.0)),
    ("Analysis: ...\nScores: \\boxed{\n3,\t10\n}\n", (3.0, 10.0)),
    (r"\boxed {8 , 5}", (8.0, 5.0)),
    (r"\boxed{\text{8}, {5}}", (8.0, 5.0)),
    (r"\boxed{{6}, \mathbf{7}}", (6.0, 7.0)),
    (r"first \boxed{1, 2} then the final \boxed{3, 4}", (3.0, 4.0)),
    (r"\boxed{-1, +2.5e1}", (-1.0, 25.0)),
    (r"\boxed{.5, 0.}", (0.5, 0.0)),
])
def test_parses(text, expected):
    assert parse_scores(text) == expected


@pytest.mark.parametrize("text", [
    "", "no box here", r"\boxed{}", r"\boxed{8}", r"\boxed{8, 5, 3}", r"\boxed{8; 5}", r"\boxed{eight, 5}",
    r"\boxed{nan, 3}", r"\boxed{inf, 1}", r"\boxed{-Infinity, 1}", r"\boxed{1e400, 2}", r"\boxed{8, 5",
    r"\boxed{1, 2} and then \boxed{3,", r"\boxed{x, x}", r"\boxed{1_000, 2}", r"\boxed{8/10, 5/10}", r"\boxed{, 5}",
    r"boxed{8, 5}", r"\boxed[8, 5]", r"\boxed{8 5, 6}",
])
def test_rejects_malformed(text):
    assert parse_scores(text) is None


def test_non_strings_give_none():
    assert parse_scores(None) is None  # type: ignore[arg-type]
    assert parse_scores(b"\\boxed{1, 2}") is None  # type: ignore[arg-type]


fragments = st.sampled_from(["\\boxed", "{", "}", ",", " ", "\\text", "nan", "inf", "1e999", "-", ".", "8", "5.5", "\n"])


@given(st.one_of(st.text(), st.lists(st.one_of(fragments, st.text(max_size=3)), max_size=30).map("".join)))
def test_never_raises(text):
    result = parse_scores(text)
    assert result is None or (len(result) == 2 and all(math.isfinite(v) for v in result))


@given(st.floats(allow_nan=False, allow_infinity=False, width=32), st.floats(allow_nan=False, allow_infinity=False),
       st.text(alphabet=st.characters(blacklist_characters="\\{}"), max_size=40))
def test_round_trips_finite_numbers(a, b, prefix):
    assert parse_scores(f"{prefix}Scores: \\boxed{{{a!r}, {b!r}}}") == (a, b)
