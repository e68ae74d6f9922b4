"""Stage 1's requests and reward: order and label of judge cases, balanced orders, the verdict reward, the
GRM's warm-start examples and the judge's evaluation."""

import numpy as np
from PIL import Image

from grlhf.data import synthetic
from grlhf.data.loaders import PreferencePair
from grlhf.data.synthetic import world
from grlhf.reward.evaluate import evaluate_judge
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.reward.verdicts import (VerdictReward, answer_example, answers_directly, judge_case, judgment_rewards,
                                   sample_orders, shown_second, verdict_example, verdict_target, warm_start_example)
from grlhf.rollout.base import Completion
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
    cases = sample_orders(np.random.default_rng(0), ["a", "b"], balanced=True)
    assert cases == [("a", False), ("a", True), ("b", False), ("b", True)]
    random = sample_orders(np.random.default_rng(0), list(range(200)), balanced=False)
    assert [i for i, _ in random] == list(range(200)) and 70 < sum(s for _, s in random) < 130


def test_rewards_count_unparseable_judgments():
    rewards, failures = judgment_rewards(["\\boxed{9, 2}", "no scores", "\\boxed{3, 8}"], [1, 1, 1])
    np.testing.assert_array_equal(rewards, [1.0, 0.0, 0.0])
    assert failures == 1


def test_the_verdict_reward_scores_each_judgment_against_its_cases_label():
    cases = [judge_case(PAIR, swap, template=COMPACT_JUDGE_TEMPLATE) for swap in (False, True)]
    judgments = [[Completion([1], [0.0], "\\boxed{9, 2}", "stop"), Completion([1], [0.0], "garbled", "stop")]] * 2
    rewards, metrics = VerdictReward("signed")(cases, judgments, rng=np.random.default_rng(0), step=0)
    np.testing.assert_array_equal(rewards, [1.0, -1.0, -1.0, -1.0])  # right for case 1, wrong for case 2
    assert metrics == {"parse_failures": 2.0}


def test_evaluation_measures_accuracy_and_position_bias():
    # a judge that always prefers the first response: right only when the preferred answer is first
    backend = ScriptedJudge({"red": 5.0, "blue": 5.0, "green": 5.0}, first_bias=1.0)
    pairs = [PAIR, PreferencePair("1", IMAGE, "q", "green", "red")]
    metrics = evaluate_judge(backend, pairs, template=COMPACT_JUDGE_TEMPLATE, max_tokens=8)
    assert metrics["accuracy_first"] == 1.0 and metrics["accuracy_second"] == 0.0
    assert metrics["accuracy"] == 0.5 and metrics["position_bias"] == 1.0 and metrics["pairs"] == 2
    assert metrics["parse_failure_rate"] == 0.0


def _traces(count: int = 200):
    cfg = synthetic.SyntheticConfig(question_kinds=("colour", "count"), max_shapes=2, trace_style="short")
    return [synthetic.grm_trace(cfg, i) for i in range(count)]


def test_answer_fraction_zero_gives_only_traces():
    for item in _traces(20):
        conversation, target = warm_start_example(item, template=COMPACT_JUDGE_TEMPLATE)
        assert target == item["trace"] and "Response 1" in conversation[0]["content"][-1]["text"]


def test_direct_answers_are_the_pairs_question_answered_right_at_the_configured_rate():
    traces = _traces()
    direct = [answers_directly(item, 0.3, seed=0) for item in traces]
    assert 0.2 < np.mean(direct) < 0.4
    assert direct == [answers_directly(item, 0.3, seed=0) for item in traces]  # a fixed draw per item
    assert direct != [answers_directly(item, 0.3, seed=1) for item in traces]
    for item, is_direct in zip(traces, direct):
        conversation, target = warm_start_example(item, template=COMPACT_JUDGE_TEMPLATE, answer_fraction=0.3)
        if is_direct:
            assert target == world.answer(item["scene"], item["question"])
            assert conversation[0]["content"][-1]["text"] == item["question"]
            assert conversation[0]["content"][0]["image"] is item["image"]
        else:
            assert target == item["trace"]


def test_answer_examples_are_the_pairs_question_answered_right():
    for item in _traces(20):
        conversation, target = answer_example(item)
        assert target == world.answer(item["scene"], item["question"])
        assert conversation[0]["content"][-1]["text"] == item["question"]
        assert conversation[0]["content"][0]["image"] is item["image"]


def test_verdict_targets_follow_the_label_the_order_and_the_dataset():
    assert verdict_target(PAIR, False) == "Analysis: Response 1 is better than Response 2.\nScores: \\boxed{8, 3}"
    assert verdict_target(PAIR, True) == "Analysis: Response 2 is better than Response 1.\nScores: \\boxed{3, 8}"
    rich = PreferencePair("1", IMAGE, "q", "red", "blue", principles="Be exact.\n\nName  the colour.",
                          scores=(4.5, 2.0))
    assert verdict_target(rich, True) == ("Specific Criteria: Be exact. Name the colour.\n"
                                          "Analysis: Response 2 is better than Response 1.\nScores: \\boxed{2, 4.5}")
    for pair in (PAIR, rich):  # the rule reward calls every target right
        rewards, failures = judgment_rewards([verdict_target(pair, False), verdict_target(pair, True)], [1, 2])
        assert failures == 0 and rewards.tolist() == [1.0, 1.0]


def test_verdict_examples_show_each_pair_in_a_fixed_random_order():
    pairs = [PreferencePair(f"f:{i}", IMAGE, "q", "red", "blue") for i in range(200)]
    swaps = [shown_second(p, seed=0) for p in pairs]
    assert 70 < sum(swaps) < 130 and swaps == [shown_second(p, seed=0) for p in pairs]
    assert swaps != [shown_second(p, seed=1) for p in pairs]
    conversation, target = verdict_example(pairs[0], template=COMPACT_JUDGE_TEMPLATE)
    first = "blue" if swaps[0] else "red"
    assert f"# Response 1: {first}" in _text(judge_case(pairs[0], swaps[0], template=COMPACT_JUDGE_TEMPLATE))
    assert f"# Response 1: {first}" in "".join(c.get("text", "") for c in conversation[0]["content"])
    assert target == verdict_target(pairs[0], swaps[0])


def test_principles_reach_the_judge_prompt_only_when_asked():
    pair = PreferencePair("2", IMAGE, "q", "red", "blue", principles="Prefer the exact colour.")
    shown = _text(judge_case(pair, False, template=COMPACT_JUDGE_TEMPLATE, principles=True))
    hidden = _text(judge_case(pair, False, template=COMPACT_JUDGE_TEMPLATE, principles=False))
    assert shown != hidden and "Prefer the exact colour." in shown and "Prefer" not in hidden


def test_the_evaluation_skips_and_counts_pairs_too_long_to_batch():
    from grlhf.data.lengths import LengthLimit
    from grlhf.data.processor import load_processor
    from grlhf.tiny import resolve_model_path

    processor = load_processor(resolve_model_path("tiny"))
    backend = ScriptedJudge({"red": 9.0, "blue": 2.0})
    long = PreferencePair("9", IMAGE, "What colour? " + "really " * 300, "red", "blue")
    metrics = evaluate_judge(backend, [PAIR, long], template=COMPACT_JUDGE_TEMPLATE, max_tokens=8,
                             limit=LengthLimit(max_prompt=512, max_total=512), processor=processor)
    assert metrics["pairs"] == 1 and metrics["skipped_too_long"] == 1 and metrics["accuracy"] == 1.0
    assert len(backend.seen) == 2  # the long pair never reached the judge


def test_the_policy_evaluation_skips_and_counts_prompts_too_long_to_batch():
    from grlhf.data.lengths import LengthLimit
    from grlhf.data.loaders import Prompt
    from grlhf.data.processor import load_processor
    from grlhf.reward.evaluate import evaluate_policy
    from grlhf.tiny import resolve_model_path

    class Echo:  # answers every prompt with two tokens, and remembers the questions it saw
        def __init__(self):
            self.seen = []

        def generate(self, requests, sampling):
            self.seen += [r[0]["content"][-1]["text"] for r in requests]
            return [[Completion([1, 2], [0.0, 0.0], "red", "stop")] for _ in requests]

    prompts = [Prompt("0", IMAGE, "What colour?"), Prompt("1", IMAGE, "What colour? " + "really " * 300)]
    generator = Echo()
    metrics = evaluate_policy(generator, prompts, max_tokens=4, limit=LengthLimit(512, 512),
                              processor=load_processor(resolve_model_path("tiny")))
    assert metrics["prompts"] == 1 and metrics["skipped_too_long"] == 1 and generator.seen == ["What colour?"]
