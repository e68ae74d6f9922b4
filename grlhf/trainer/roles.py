"""The models of a run by role, built from the config: the rollout engine (``rollout.backend``), the judge
engine behind stage 2's GRM reward (``reward.judge.backend``), and stage 2's reward (``reward.source``)."""

from __future__ import annotations

import os

from grlhf.config import Config, ConfigError
from grlhf.data.processor import load_processor
from grlhf.dry_run import device_memory_bytes, rollout_rows_that_fit
from grlhf.eval.engines import api_key
from grlhf.models.qwen_vl import from_pretrained
from grlhf.models.qwen_vl.reward_model import has_reward_head, load_reward_model
from grlhf.reward.base import Reward
from grlhf.reward.judge import GroupJudge, GroupReward
from grlhf.reward.oracle import OracleReward
from grlhf.reward.prompt import judge_template
from grlhf.reward.score_model import ScoreReward
from grlhf.rollout.base import Generator
from grlhf.rollout.jax_sampler import JaxSampler
from grlhf.rollout.openai_judge import OpenAIJudge
from grlhf.tiny import resolve_model_path
from grlhf.trainer.runs import Run


def vllm_engine(cfg: Config, model_dir: os.PathLike, processor=None) -> Generator:
    """A ``VLLMEngine`` on ``model_dir`` with the ``rollout.vllm`` settings (dtype ``auto``: ``model.dtype``)."""
    from grlhf.rollout.vllm_engine import VLLMEngine  # vLLM is optional: imported only when asked for

    v = cfg.rollout.vllm
    return VLLMEngine(model_dir, processor=processor, dtype=cfg.model.dtype if v.dtype == "auto" else v.dtype,
                      max_model_len=v.max_model_len, max_num_seqs=v.max_num_seqs, kv_cache_gib=v.kv_cache_gib,
                      gpu_memory_utilization=v.gpu_memory_utilization, enforce_eager=v.enforce_eager,
                      tensor_parallel_size=v.tensor_parallel_size, seed=cfg.trainer.seed, verify_sync=v.verify_sync)


def rollout_max_rows(cfg: Config, model, mesh=None) -> int:
    """``rollout.max_rows``, or for 0 (auto) the most rows per device that fit in the device's memory beside
    the training state by the dry run's estimate (``grlhf.dry_run.rollout_rows_that_fit``): the whole
    rollout batch where the device's memory is unknown (CPU) or it fits."""
    if cfg.rollout.max_rows:
        return cfg.rollout.max_rows
    config = getattr(model, "config", None)
    if config is None:
        return 0
    shape = (1, 1, 1) if mesh is None else mesh.shape
    return rollout_rows_that_fit(cfg, config, device_memory_bytes(), shape)


def jax_sampler(cfg: Config, model, processor, mesh=None, max_rows: int = 0) -> JaxSampler:
    """A ``JaxSampler`` on ``model`` with the run's buckets and prefix sharing, decoding at most ``max_rows``
    rows per device at once (0: all)."""
    return JaxSampler(model, processor=processor, length_buckets=cfg.data.length_buckets,
                      patch_buckets=cfg.data.patch_buckets, mesh=mesh, share_prefix=cfg.rollout.share_prefix,
                      max_rows=max_rows or None)


def rollout_engine(run: Run) -> Generator:
    """The JAX sampler on the run's model, or (``rollout.backend=vllm``) an in-process vLLM engine started from
    the run's model directory with the actor's current weights pushed into it."""
    if run.cfg.rollout.backend == "vllm":
        engine = vllm_engine(run.cfg, run.model_dir, processor=run.processor)
        engine.update_weights(run.model)
        return engine
    return jax_sampler(run.cfg, run.model, run.processor, run.mesh, rollout_max_rows(run.cfg, run.model, run.mesh))


def judge_engine(cfg: Config, mesh=None) -> Generator:
    """The GRM at ``reward.judge_path`` behind ``reward.judge.backend``: the JAX sampler, an in-process vLLM
    engine, or a remote OpenAI-compatible endpoint serving it (``reward.judge.url``; model name
    ``reward.judge.model``, default ``reward.judge_path`` as given; the key from ``$reward.judge.api_key_env``)."""
    judge = cfg.reward.judge
    if judge.backend == "remote":
        remote = OpenAIJudge(judge.url, judge.model or cfg.reward.judge_path, api_key=api_key(judge.api_key_env),
                             vllm_extras=judge.vllm_extras, max_concurrency=judge.max_concurrency,
                             timeout=judge.timeout, max_retries=judge.max_retries)
        remote.check_health()  # once, at start: a dead endpoint is an error now, not when first needed
        return remote
    path = resolve_model_path(cfg.reward.judge_path, cfg.model.tiny_seed)
    processor = load_processor(path)
    if judge.backend == "vllm":
        return vllm_engine(cfg, path, processor=processor)
    grm = from_pretrained(path, dtype=cfg.model.dtype, mesh=mesh, attention_impl=cfg.model.attention_impl)
    # an explicit rollout.max_rows bounds the judge too; auto is sized for the rollout (the judge's batches are
    # bounded by reward.judge_batch)
    return jax_sampler(cfg, grm, processor, mesh, cfg.rollout.max_rows)


def policy_reward(cfg: Config, mesh=None) -> Reward:
    """Stage 2's reward behind ``reward.source``: the GRM's grouped comparison (``grm``) or one-opponent
    judging (``grm_single``), the score-only RM (``rm``), or the synthetic world's truth (``oracle``)."""
    r = cfg.reward
    if r.source == "oracle":
        return OracleReward(r.incomplete_score)
    if r.source == "rm":
        path = resolve_model_path(r.rm_path, cfg.model.tiny_seed)
        if not has_reward_head(path):
            raise ConfigError(f"reward.rm_path={r.rm_path}: no score.safetensors there (export of trainer.stage=rm)")
        model = load_reward_model(path, dtype=cfg.model.dtype, mesh=mesh, attention_impl=cfg.model.attention_impl)
        return ScoreReward(model, load_processor(path), cfg.data.length_buckets, cfg.data.patch_buckets, mesh,
                           incomplete_score=r.incomplete_score, batch_size=r.judge_batch)
    judge = GroupJudge(judge_engine(cfg, mesh), template=judge_template(r.template), both_orders=r.both_orders,
                       samples=r.judge_samples, temperature=r.judge_temperature, max_tokens=r.judge_max_tokens,
                       incomplete_score=r.incomplete_score, max_batch=r.judge_batch, seed=cfg.trainer.seed)
    return GroupReward(judge, single=r.source == "grm_single")


__all__ = ["jax_sampler", "judge_engine", "policy_reward", "rollout_engine", "rollout_max_rows", "vllm_engine"]
