"""Stage 1 on the host: order and label of judge cases, balanced orders, rewards and the evaluation."""

import numpy as np
from PIL import Image

from grlhf.data.loaders import PreferencePair
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.trainer.judging import evaluate_judge, judge_case, judgment_rewards, sample_orders
from tests.reward.test_judge import ScriptedJudge

IMAGE = Image.new("RGB", (28, 28), (255, 0, 0))
PAIR = PreferencePair("0", IMAGE, "What colour is the square?", "red", "blue")


def _text(case):
    return "".join(p.get("text", "") for p in case.conversation[0]["content"] if p["type"] == "text")


def test_the_label_follows_the_order():
    shown, swapped = (judge_case(PAIR, swap, template=COMPACT_JUDGE_TEMPLATE) for swap in (False, True))
    assert shown.preferred == 1 and "# Response 1: red\n# Response 2: blue" in _text(shown)
    assert swapped.preferred == 2 and "# Response 1: blue\n# Response 2: red" in _text(swapped)


def test_balanced_orders_show_every_pair_both_ways():
    cases = sample_orders(np.random.default_rng(0), [3, 7], balanced=True)
    assert cases == [(3, False), (3, True), (7, False), (7, True)]
    random = sample_orders(np.random.default_rng(0), list(range(200)), balanced=False)
    assert [i for i, _ in random] == list(range(200)) and 70 < sum(s for _, s in random) < 130


def test_rewards_count_unparseable_judgments():
    rewards, failures = judgment_rewards(["\\boxed{9, 2}", "no scores", "\\boxed{3, 8}"], [1, 1, 1])
    np.testing.assert_array_equal(rewards, [1.0, 0.0, 0.0])
    assert failures == 1


def test_evaluation_measures_accuracy_and_position_bias():
    # a judge that always prefers the first response: right only when the preferred answer is first
    backend = ScriptedJudge({"red": 5.0, "blue": 5.0, "green": 5.0}, first_bias=1.0)
    pairs = [PAIR, PreferencePair("1", IMAGE, "q", "green", "red")]
    metrics = evaluate_judge(backend, pairs, template=COMPACT_JUDGE_TEMPLATE, max_tokens=8)
    assert metrics["accuracy_first"] == 1.0 and metrics["accuracy_second"] == 0.0
    assert metrics["accuracy"] == 0.5 and metrics["position_bias"] == 1.0 and metrics["pairs"] == 2
    assert metrics["parse_failure_rate"] == 0.0
