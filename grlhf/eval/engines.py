"""The models an evaluation runs: a generator (policy or GRM) behind the JAX sampler, an in-process vLLM
engine or a remote OpenAI-compatible endpoint, and the score-only reward model.

An API key is read from the environment variable ``api_key_env`` names, at the moment the remote client is
built; it is sent only in the ``Authorization`` header and never stored in an ``EngineSpec`` (so never in
``results.json`` or a log line).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from grlhf.config import ConfigError
from grlhf.data.processor import load_processor
from grlhf.models.qwen_vl import from_pretrained
from grlhf.models.qwen_vl.reward_model import has_reward_head, load_reward_model
from grlhf.rollout.base import Generator
from grlhf.rollout.jax_sampler import JaxSampler
from grlhf.rollout.openai_judge import OpenAIJudge
from grlhf.tiny import resolve_model_path

BACKENDS = ("jax", "vllm", "remote")
DEFAULT_LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class EngineSpec:
    """How to run a model. ``remote``: ``url`` (base URL), the served ``model`` name given per call,
    ``api_key_env`` (the variable holding the key, or None), ``vllm_extras`` (send vLLM-only request fields;
    false for other OpenAI-compatible servers)."""

    backend: str = "jax"
    dtype: str = "float32"
    length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS
    url: Optional[str] = None
    api_key_env: Optional[str] = None
    vllm_extras: bool = True
    max_concurrency: int = 16
    timeout: float = 120.0
    max_retries: int = 4
    max_model_len: int = 4096  # vllm
    kv_cache_gib: float = 4.0  # vllm
    gpu_memory_utilization: float = 0.4  # vllm

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "remote" and not self.url:
            raise ConfigError("the remote backend needs a base URL (--url)")

    def describe(self) -> dict[str, Any]:
        """What results.json records of the spec (the key's variable name, never its value)."""
        return asdict(self)


def api_key(env_name: Optional[str]) -> Optional[str]:
    """The key in ``$env_name`` (None when no variable is named); a named but unset or empty variable is an
    error naming the variable."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(f"api_key_env={env_name}: the environment variable {env_name} is not set or empty")
    return value


def generator(model: str, spec: EngineSpec) -> Generator:
    """A generator for ``model``: an HF directory (or ``tiny``) for jax / vllm, a served model name for remote."""
    if spec.backend == "remote":
        return OpenAIJudge(spec.url, model, api_key=api_key(spec.api_key_env), vllm_extras=spec.vllm_extras,
                           max_concurrency=spec.max_concurrency, timeout=spec.timeout, max_retries=spec.max_retries)
    path = resolve_model_path(model)
    processor = load_processor(path)
    if spec.backend == "vllm":
        from grlhf.rollout.vllm_engine import VLLMEngine  # optional dependency

        return VLLMEngine(path, processor=processor, dtype=spec.dtype, max_model_len=spec.max_model_len,
                          kv_cache_gib=spec.kv_cache_gib, gpu_memory_utilization=spec.gpu_memory_utilization)
    return JaxSampler(from_pretrained(path, dtype=spec.dtype), processor=processor,
                      length_buckets=spec.length_buckets)


def is_reward_model(model: str) -> bool:
    """Whether ``model`` is a directory saved by ``trainer.stage=rm`` (a score head beside the backbone)."""
    path = Path(model)
    return path.is_dir() and has_reward_head(path)


def reward_model(model: str, spec: EngineSpec) -> tuple[Any, Any]:
    """``(score model, processor)`` of a ``trainer.stage=rm`` export (JAX only: the head is grlhf's own)."""
    path = resolve_model_path(model)
    return load_reward_model(path, dtype=spec.dtype), load_processor(path)


__all__ = ["BACKENDS", "EngineSpec", "api_key", "generator", "is_reward_model", "reward_model"]
