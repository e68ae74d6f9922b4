"""The models by role from the config: ``reward.judge.backend`` / ``rollout.backend`` -> the right engine with the
config's settings; ``reward.source`` -> the right reward; ``Roles.sync_weights`` reaches only weight followers."""

import pytest

from grlhf.config import load_config
from grlhf.rollout.base import Generator, WeightFollower
from grlhf.rollout.jax_sampler import JaxSampler
from grlhf.rollout.openai_judge import OpenAIJudge
from grlhf.reward.judge import GroupReward
from grlhf.reward.oracle import OracleReward
from grlhf.trainer.learners import Roles
from grlhf.trainer.roles import judge_engine, policy_reward


def test_the_remote_judge_gets_the_configured_endpoint(monkeypatch):
    checked = []  # no server here: record the health check that judge_engine runs once at start
    monkeypatch.setattr(OpenAIJudge, "check_health", lambda self: checked.append(self.base_url))
    cfg = load_config(["reward.judge.backend=remote", "reward.judge.url=http://judge:8000", "reward.judge_path=runs/g",
                       "reward.judge.max_concurrency=7", "reward.judge.timeout=9", "reward.judge.max_retries=2"])
    backend = judge_engine(cfg)  # no model is loaded: the server has it
    assert isinstance(backend, OpenAIJudge) and isinstance(backend, Generator)
    assert not isinstance(backend, WeightFollower)  # a remote server holds a fixed model
    assert backend.url == "http://judge:8000/v1/chat/completions" and backend.model == "runs/g"
    assert (backend.max_concurrency, backend.timeout, backend.max_retries) == (7, 9.0, 2)
    assert checked == ["http://judge:8000"]
    assert "Authorization" not in backend.headers and backend.vllm_extras


def test_the_remote_judge_key_comes_from_the_named_variable(monkeypatch):
    args = ["reward.judge.backend=remote", "reward.judge.url=http://judge:8000", "reward.judge_path=runs/g",
            "reward.judge.api_key_env=GRLHF_TEST_JUDGE_KEY", "reward.judge.vllm_extras=false"]
    monkeypatch.setattr(OpenAIJudge, "check_health", lambda self: None)  # no server here
    monkeypatch.setenv("GRLHF_TEST_JUDGE_KEY", "sk-from-env")
    backend = judge_engine(load_config(args))
    assert backend.headers["Authorization"] == "Bearer sk-from-env" and not backend.vllm_extras
    monkeypatch.delenv("GRLHF_TEST_JUDGE_KEY")
    with pytest.raises(ValueError, match="GRLHF_TEST_JUDGE_KEY"):
        judge_engine(load_config(args))


def test_the_default_judge_is_the_jax_sampler_with_the_run_settings():
    cfg = load_config(["reward.judge_path=tiny", "rollout.share_prefix=false"])
    backend = judge_engine(cfg)
    assert isinstance(backend, JaxSampler) and backend.share_prefix is False
    assert backend.length_buckets == tuple(cfg.data.length_buckets)


def test_the_reward_source_picks_the_reward():
    assert isinstance(policy_reward(load_config(["reward.source=oracle"])), OracleReward)
    cfg = load_config(["reward.source=grm_single", "reward.judge_path=tiny", "reward.judge_samples=3"])
    reward = policy_reward(cfg)
    assert isinstance(reward, GroupReward) and reward.single and reward.judge.samples == 3
    assert isinstance(reward.judge.backend, JaxSampler)


class _Follower:
    def __init__(self):
        self.models = []

    def generate(self, requests, sampling):
        return []

    def metrics(self):
        return {}

    def update_weights(self, model):
        self.models.append(model)


def test_sync_weights_pushes_the_actor_to_a_follower_and_leaves_a_fixed_engine_alone():
    follower, actor = _Follower(), object()
    Roles(actor, follower).sync_weights()
    assert follower.models == [actor]
    fixed = OpenAIJudge("http://judge:8000", "m")
    Roles(actor, fixed).sync_weights()  # a remote server: nothing to push, and no error
