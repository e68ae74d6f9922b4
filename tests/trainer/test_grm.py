"""Stage 1's warm-start examples: judgment traces, and direct answers mixed in by ``sft.answer_fraction``."""

import numpy as np

from grlhf.data import synthetic
from grlhf.data.synthetic import world
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.trainer.grm import answers_directly, warm_start_example


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
