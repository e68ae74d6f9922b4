"""The rollout protocol: every generation backend (the JAX sampler, vLLM, a remote judge) offers
``generate(requests, sampling) -> one list of n completions per request`` and ``update_weights``."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from grlhf.rollout.jax_sampler import Completion, SamplingParams

# A request is one conversation in the HF chat format, its images inline:
#   [{"role": "user", "content": [{"type": "image", "image": <PIL image>}, {"type": "text", "text": "..."}]}]
Request = list[dict[str, Any]]


@runtime_checkable
class RolloutBackend(Protocol):
    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[list[Completion]]:
        """``sampling.n`` completions for each request, in request order."""
        ...

    def update_weights(self, params: Any) -> None:
        """Make the next ``generate`` use these parameters."""
        ...


__all__ = ["Completion", "Request", "RolloutBackend", "SamplingParams"]
