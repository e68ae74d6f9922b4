"""Stage 2's reward-source switch: oracle, grouped comparison and one-opponent judging, incomplete answers."""

import numpy as np
import pytest

from grlhf.config import load_config
from grlhf.data import synthetic
from grlhf.reward.judge import GroupJudge
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.rollout.jax_sampler import Completion
from grlhf.trainer.policy import policy_rewards, true_quality
from tests.reward.test_judge import ScriptedJudge


def _prompt_and_answers():
    cfg = synthetic.SyntheticConfig(question_kinds=("colour",), max_shapes=1)
    item = synthetic.rl_prompt(cfg, 0)
    wrong = next(c for c in synthetic.world.COLOURS if c != item["answer"])
    answers = [item["answer"], wrong, item["answer"]]
    finish = ["stop", "stop", "length"]
    completions = [[Completion([1], [0.0], text, reason) for text, reason in zip(answers, finish)]]
    return item, answers, completions


def test_oracle_rewards_are_the_true_quality_and_incomplete_answers_get_the_configured_score():
    item, answers, completions = _prompt_and_answers()
    cfg = load_config(["reward.source=oracle", "reward.incomplete_score=-0.5"])
    rewards, metrics = policy_rewards(cfg, None, [item], completions, np.random.default_rng(0), 0)
    np.testing.assert_allclose(rewards, [1.0, 0.0, -0.5])
    assert true_quality(item, answers[0]) == 1.0 and metrics == {}


@pytest.mark.parametrize("source", ["grm", "grm_single"])
def test_judge_sources_use_the_judge_and_skip_incomplete_answers(source):
    item, answers, completions = _prompt_and_answers()
    cfg = load_config([f"reward.source={source}", "reward.judge_path=unused"])
    backend = ScriptedJudge({answers[0]: 9.0, answers[1]: 2.0})
    judge = GroupJudge(backend, template=COMPACT_JUDGE_TEMPLATE, incomplete_score=0.0)
    rewards, metrics = policy_rewards(cfg, judge, [item], completions, np.random.default_rng(0), 0)
    np.testing.assert_allclose(rewards, [9.0, 2.0, 0.0])  # the third answer never finished
    assert all(answers[2] not in pair or pair.count(answers[2]) < 2 for pair in backend.seen)
    assert len(backend.seen) == (2 if source == "grm" else 2)
    assert metrics["incomplete_answers"] == 1


def test_policy_stage_needs_a_judge_for_judge_sources():
    from grlhf.config import ConfigError

    with pytest.raises(ConfigError, match="reward.judge_path"):
        load_config(["trainer.stage=policy", "reward.source=grm"])
    load_config(["trainer.stage=policy", "reward.source=oracle"])


def test_rm_source_scores_each_complete_answer_with_the_reward_model():
    from grlhf.data.processor import load_processor
    from grlhf.models.qwen_vl.reward_model import load_reward_model
    from grlhf.trainer.loop import resolve_model_path
    from grlhf.trainer.policy import prompt_conversation
    from grlhf.trainer.rm import ScoreReward, score_answers

    item, answers, completions = _prompt_and_answers()
    path = resolve_model_path("tiny")
    processor = load_processor(path)
    eos = processor.tokenizer.eos_token_id
    completions = [[Completion(processor.tokenizer(c.text, add_special_tokens=False)["input_ids"] + [eos], [0.0],
                               c.text, c.finish_reason) for c in completions[0]]]
    model = load_reward_model(path, head=np.random.default_rng(0).normal(size=(1, 128)).astype(np.float32))
    scorer = ScoreReward(model, processor, length_buckets=[128, 256], incomplete_score=-0.5)
    cfg = load_config(["reward.source=rm", "reward.rm_path=unused"])
    rewards, metrics = policy_rewards(cfg, scorer, [item], completions, np.random.default_rng(0), 0)
    conversation = prompt_conversation(item["question"], item["image"])
    expected = score_answers(model, processor, [conversation] * 2, answers[:2], batch_size=2,
                             length_buckets=[128, 256])  # text closed with end of turn = the sampled ids
    np.testing.assert_allclose(rewards[:2], expected, rtol=1e-5)
    assert rewards[2] == -0.5 and rewards[0] != rewards[1] and metrics["rm_calls"] == 2


def test_rm_source_needs_a_reward_model_path():
    with pytest.raises(Exception, match="reward.rm_path"):
        load_config(["trainer.stage=policy", "reward.source=rm"])
