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
    (r"\boxed{\mathrm{8}, \textbf{ {5} }}", (8.0, 5.0)),
    (r"\boxed{\text {\mathbf{8}}, 5}", (8.0, 5.0)),  # wrappers nest
    ("\\boxed{8, 5}" + "{" * 3, (8.0, 5.0)),  # text after the box's close does not matter
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


@pytest.mark.parametrize("text", [
    r"\boxed{\frac12, 3}",  # was (12, 3): every LaTeX command other than a formatting wrapper is unparseable
    r"\boxed{\frac{1}{2}, 3}",
    r"\boxed{\sqrt{4}, 5}",  # was (4, 5)
    r"\boxed{\times 8, 5}",  # was (8, 5)
    r"\boxed{8, 5\%}",
    r"\boxed{\boxed{1, 2}, 3}",  # was (1, 2): a box inside the box
    r"\boxed{\boxed{1, 2}}",
    r"\boxed{1, 2} then \boxed{\text{\boxed{3, 4}}}",
    r"\boxed{\text{8, 5}}",  # the comma must separate two scores, not sit inside one
    r"\boxed{{8, 5}}",
    r"\boxed{{6}{7}, 5}",
    r"\boxed{\text{8}}, 5}",
    "\\boxed{\u0668, \u0665}",  # Arabic-Indic digits: was (8, 5)
    "\\boxed{\uff18, \uff15}",  # fullwidth digits
    "\\boxed{\U0001d7d6, \U0001d7d3}",  # mathematical bold digits
    "\\boxed{1\u0660, 5}",  # one non-ASCII digit is enough
    "\\boxed{8,\u00a05}",  # non-ASCII whitespace is not the grammar's whitespace
    r"\boxed{8, 5} and an unclosed \boxed{",
    r"\boxed{ \boxed{8, 5}",  # the outer box never closes
])
def test_rejects_what_a_judge_should_not_get_credit_for(text):
    assert parse_scores(text) is None


def test_deep_nesting_does_not_raise():
    assert parse_scores("\\boxed{" + "{" * 5000 + "8" + "}" * 5000 + ", 5}") == (8.0, 5.0)


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
