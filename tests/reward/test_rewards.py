"""Stage 2's rewards behind one interface: the oracle, grouped comparison and one-opponent judging, the
score-only RM; incomplete answers; and the config switch that picks one."""

import numpy as np
import pytest

from grlhf.config import ConfigError, load_config
from grlhf.data import synthetic
from grlhf.data.processor import load_processor
from grlhf.models.qwen_vl.reward_model import load_reward_model
from grlhf.reward.judge import GroupJudge, GroupReward
from grlhf.reward.oracle import OracleReward
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.reward.score_model import ScoreReward, score_answers
from grlhf.rollout.base import Completion
from grlhf.tiny import cached_tiny_checkpoint
from grlhf.trainer.datasets import synthetic_prompt
from tests.reward.test_judge import ScriptedJudge

RNG = np.random.default_rng(0)


def _prompt_and_answers():
    prompt = synthetic_prompt(synthetic.SyntheticConfig(question_kinds=("colour",), max_shapes=1), 0)
    wrong = next(c for c in synthetic.world.COLOURS if c != prompt.ground_truth)
    answers = [prompt.ground_truth, wrong, prompt.ground_truth]
    finish = ["stop", "stop", "length"]
    completions = [[Completion([1], [0.0], text, reason) for text, reason in zip(answers, finish)]]
    return prompt, answers, completions


def test_oracle_rewards_are_the_true_quality_and_incomplete_answers_get_the_configured_score():
    prompt, answers, completions = _prompt_and_answers()
    rewards, metrics = OracleReward(incomplete_score=-0.5)([prompt], completions, rng=RNG, step=0)
    np.testing.assert_allclose(rewards, [1.0, 0.0, -0.5])
    assert prompt.true_quality(answers[0]) == 1.0 and metrics == {}
    assert prompt.log_fields(answers[1]) == {"question": prompt.question, "true_quality": 0.0}


def test_the_oracle_refuses_prompts_it_cannot_check():
    prompt, _, completions = _prompt_and_answers()
    real = type(prompt)("0", prompt.image, prompt.question)  # a prompt from a file: no scene
    with pytest.raises(ValueError, match="synthetic"):
        OracleReward()([real], completions, rng=RNG, step=0)


@pytest.mark.parametrize("single", [False, True])
def test_judge_rewards_use_the_judge_and_skip_incomplete_answers(single):
    prompt, answers, completions = _prompt_and_answers()
    backend = ScriptedJudge({answers[0]: 9.0, answers[1]: 2.0})
    reward = GroupReward(GroupJudge(backend, template=COMPACT_JUDGE_TEMPLATE, incomplete_score=0.0), single=single)
    rewards, metrics = reward([prompt], completions, rng=np.random.default_rng(0), step=0)
    np.testing.assert_allclose(rewards, [9.0, 2.0, 0.0])  # the third answer never finished
    assert all(answers[2] not in pair or pair.count(answers[2]) < 2 for pair in backend.seen)
    assert len(backend.seen) == 2  # both orders of the one complete pair, or one opponent for each answer
    assert metrics["incomplete_answers"] == 1


def test_the_score_reward_scores_each_complete_answer_with_the_reward_model():
    prompt, answers, completions = _prompt_and_answers()
    path = cached_tiny_checkpoint("qwen2_vl", 0)
    processor = load_processor(path)
    eos = processor.tokenizer.eos_token_id
    completions = [[Completion(processor.tokenizer(c.text, add_special_tokens=False)["input_ids"] + [eos], [0.0],
                               c.text, c.finish_reason) for c in completions[0]]]
    model = load_reward_model(path, head=np.random.default_rng(0).normal(size=(1, 128)).astype(np.float32))
    scorer = ScoreReward(model, processor, length_buckets=[128, 256], incomplete_score=-0.5)
    rewards, metrics = scorer([prompt], completions, rng=RNG, step=0)
    expected = score_answers(model, processor, [prompt.conversation] * 2, answers[:2], batch_size=2,
                             length_buckets=[128, 256])  # text closed with end of turn = the sampled ids
    np.testing.assert_allclose(rewards[:2], expected, rtol=1e-5)
    assert rewards[2] == -0.5 and rewards[0] != rewards[1] and metrics["rm_calls"] == 2


def test_policy_stage_needs_a_judge_for_judge_sources():
    with pytest.raises(ConfigError, match="reward.judge_path"):
        load_config(["trainer.stage=policy", "reward.source=grm"])
    load_config(["trainer.stage=policy", "reward.source=oracle"])


def test_rm_source_needs_a_reward_model_path():
    with pytest.raises(ConfigError, match="reward.rm_path"):
        load_config(["trainer.stage=policy", "reward.source=rm"])
