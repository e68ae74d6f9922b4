"""``reward.judge.backend`` / ``rollout.backend`` -> the right generation backend, with the config's settings."""

from grlhf.config import load_config
from grlhf.rollout.base import RolloutBackend
from grlhf.rollout.jax_sampler import JaxSampler
from grlhf.rollout.openai_judge import OpenAIJudge
from grlhf.trainer.backends import judge_backend


def test_the_remote_judge_gets_the_configured_endpoint():
    cfg = load_config(["reward.judge.backend=remote", "reward.judge.url=http://judge:8000", "reward.judge_path=runs/g",
                       "reward.judge.max_concurrency=7", "reward.judge.timeout=9", "reward.judge.max_retries=2"])
    backend = judge_backend(cfg)  # no model is loaded: the server has it
    assert isinstance(backend, OpenAIJudge) and isinstance(backend, RolloutBackend)
    assert backend.url == "http://judge:8000/v1/chat/completions" and backend.model == "runs/g"
    assert (backend.max_concurrency, backend.timeout, backend.max_retries) == (7, 9.0, 2)


def test_the_default_judge_is_the_jax_sampler_with_the_run_settings():
    cfg = load_config(["reward.judge_path=tiny", "rollout.share_prefix=false"])
    backend = judge_backend(cfg)
    assert isinstance(backend, JaxSampler) and backend.share_prefix is False
    assert backend.length_buckets == tuple(cfg.data.length_buckets)
