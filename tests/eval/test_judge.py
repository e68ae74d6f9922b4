"""Judge accuracy by order, ties, failures and position bias from scripted judgments; set specs."""

import numpy as np
import pytest
from PIL import Image

from grlhf.data.loaders import PreferencePair
from grlhf.eval.judge import grm_outcomes, judge_metrics, parse_named, parse_set_spec, split_metrics, verdict_outcomes
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from tests.eval.fakes import TableJudge

IMAGE = Image.new("RGB", (28, 28), "white")


def pairs(n):
    return [PreferencePair(str(i), IMAGE, f"q{i}", "good", "bad") for i in range(n)]


def test_verdict_outcomes_sort_each_judgment():
    correct, tie, failed = verdict_outcomes(["\\boxed{9, 2}", "\\boxed{5, 5}", "no verdict", "\\boxed{2, 9}"],
                                            [1, 1, 2, 1])
    assert correct.tolist() == [True, False, False, False]
    assert tie.tolist() == [False, True, False, False] and failed.tolist() == [False, False, True, False]


def test_a_judge_that_always_prefers_the_first_answer_has_full_position_bias():
    judge = TableJudge({"good": 5, "bad": 5}, first_bonus=1)
    m = judge_metrics(grm_outcomes(judge, pairs(6), template=COMPACT_JUDGE_TEMPLATE, max_tokens=8), resamples=50)
    assert (m["accuracy_first"], m["accuracy_second"], m["accuracy"], m["position_bias"]) == (1.0, 0.0, 0.5, 1.0)
    assert m["tie_rate"] == 0.0 and m["parse_failure_rate"] == 0.0 and judge.calls == 12
    assert m["accuracy_ci"] == [0.5, 0.5]  # every pair is right once and wrong once


def test_a_fair_judge_is_right_in_both_orders_and_ties_count_as_wrong():
    m = judge_metrics(grm_outcomes(TableJudge({"good": 8, "bad": 3}), pairs(4), template=COMPACT_JUDGE_TEMPLATE,
                                   max_tokens=8), resamples=0)
    assert m["accuracy"] == 1.0 and m["position_bias"] == 0.0 and np.isnan(m["accuracy_ci"][0])
    m = judge_metrics(grm_outcomes(TableJudge({"good": 4, "bad": 4}), pairs(4), template=COMPACT_JUDGE_TEMPLATE,
                                   max_tokens=8))
    assert m["accuracy"] == 0.0 and m["tie_rate"] == 1.0


def test_split_metrics_summarise_each_keys_pairs_alone():
    judge = TableJudge({"good": 8, "bad": 3, "meh": 5, "worse": 5}, first_bonus=1)  # meh vs worse: by position
    mixed = pairs(3) + [PreferencePair(str(i), IMAGE, f"q{i}", "meh", "worse") for i in range(3, 5)]
    outcomes = grm_outcomes(judge, mixed, template=COMPACT_JUDGE_TEMPLATE, max_tokens=8)
    rows = split_metrics(outcomes, [f"{p.chosen} > {p.rejected}" for p in mixed], resamples=20)
    assert list(rows) == ["good > bad", "meh > worse"]
    assert (rows["good > bad"]["pairs"], rows["good > bad"]["accuracy"], rows["good > bad"]["position_bias"]) == (3, 1, 0)
    assert (rows["meh > worse"]["pairs"], rows["meh > worse"]["accuracy_first"],
            rows["meh > worse"]["accuracy_second"]) == (2, 1.0, 0.0)
    assert judge_metrics(outcomes.take([3, 4]), resamples=20) == rows["meh > worse"]


def test_set_and_name_specs():
    assert parse_set_spec("vlrb=/d/x.jsonl:jsonl_pairs") == ("vlrb", "/d/x.jsonl", "jsonl_pairs")
    assert parse_set_spec("aa=/d/c:/x.parquet") == ("aa", "/d/c:/x.parquet", "align_anything")
    with pytest.raises(ValueError, match="name=path"):
        parse_set_spec("/no/name.parquet")
    assert parse_named(["a=/x", "/y"], "judge") == {"a": "/x", "/y": "/y"}
    with pytest.raises(ValueError, match="twice"):
        parse_named(["a=/x", "a=/y"], "judge")
