"""Generation backends from the config: the policy's rollouts (``rollout.backend``) and the GRM's judgments
in stage 2 (``reward.judge.backend``)."""

from __future__ import annotations

import os
from typing import Any

from grlhf.config import Config


def vllm_engine(cfg: Config, model_dir: os.PathLike, processor=None):
    """A ``VLLMEngine`` on ``model_dir`` with the ``rollout.vllm`` settings (dtype ``auto``: ``model.dtype``)."""
    from grlhf.rollout.vllm_engine import VLLMEngine

    v = cfg.rollout.vllm
    return VLLMEngine(model_dir, processor=processor, dtype=cfg.model.dtype if v.dtype == "auto" else v.dtype,
                      max_model_len=v.max_model_len, max_num_seqs=v.max_num_seqs, kv_cache_gib=v.kv_cache_gib,
                      gpu_memory_utilization=v.gpu_memory_utilization, enforce_eager=v.enforce_eager,
                      tensor_parallel_size=v.tensor_parallel_size, seed=cfg.trainer.seed, verify_sync=v.verify_sync)


def jax_sampler(cfg: Config, model, processor, mesh=None):
    """A ``JaxSampler`` on ``model`` with the run's buckets and prefix sharing."""
    from grlhf.rollout.jax_sampler import JaxSampler

    return JaxSampler(model, processor=processor, length_buckets=cfg.data.length_buckets,
                      patch_buckets=cfg.data.patch_buckets, mesh=mesh, share_prefix=cfg.rollout.share_prefix)


def rollout_backend(run) -> Any:
    """The JAX sampler on the run's model, or (``rollout.backend=vllm``) an in-process vLLM engine built from
    an export of it (``<run>/hf/rollout_engine``) that follows the model's parameters after every update."""
    cfg = run.cfg
    if cfg.rollout.backend == "vllm":
        engine = vllm_engine(cfg, run.export("rollout_engine"), processor=run.processor)
        engine.update_weights(run.model)
        return engine
    return jax_sampler(cfg, run.model, run.processor, run.mesh)


def judge_backend(cfg: Config, mesh=None) -> Any:
    """The GRM at ``reward.judge_path`` behind ``reward.judge.backend``: the JAX sampler, an in-process vLLM
    engine, or a remote OpenAI-compatible endpoint serving it (``reward.judge.url``; model name
    ``reward.judge.model``, default ``reward.judge_path`` as given)."""
    judge = cfg.reward.judge
    if judge.backend == "remote":
        from grlhf.rollout.openai_judge import OpenAIJudge

        return OpenAIJudge(judge.url, judge.model or cfg.reward.judge_path, max_concurrency=judge.max_concurrency,
                           timeout=judge.timeout, max_retries=judge.max_retries)
    from grlhf.data.processor import load_processor
    from grlhf.trainer.loop import resolve_model_path

    path = resolve_model_path(cfg.reward.judge_path, cfg.model.tiny_seed)
    processor = load_processor(path)
    if judge.backend == "vllm":
        return vllm_engine(cfg, path, processor=processor)
    from grlhf.models.qwen_vl import from_pretrained

    grm = from_pretrained(path, dtype=cfg.model.dtype, mesh=mesh, attention_impl=cfg.model.attention_impl)
    return jax_sampler(cfg, grm, processor, mesh)


__all__ = ["jax_sampler", "judge_backend", "rollout_backend", "vllm_engine"]
