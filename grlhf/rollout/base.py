"""The rollout protocol and its types. Every backend (the JAX sampler, vLLM in-process, a remote judge)
imports these from here, never from another backend.

Two roles:

- ``Generator``: ``generate(requests, sampling) -> one list of sampling.n completions per request`` and
  ``metrics() -> {name: float}``. Every backend is one.
- ``WeightFollower``: ``update_weights(model)``. Only engines that hold a model are one (``JaxSampler``,
  ``VLLMEngine``); a remote judge serves a fixed model and is not.

``check_generator`` calls a backend's methods and checks what they return: a test of the protocol that can
fail (``isinstance`` against a ``runtime_checkable`` protocol only compares method names).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

# A request is one conversation in the HF chat format, its images inline:
#   [{"role": "user", "content": [{"type": "image", "image": <PIL image>}, {"type": "text", "text": "..."}]}]
Request = list[dict[str, Any]]

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``n`` completions per request, at most ``max_tokens`` each."""

    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's eos, which the sampler adds
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={self.n}, max_tokens={self.max_tokens}")


@dataclass
class Completion:
    """One sampled answer: its tokens (the stop token included), one log-prob per token, its text."""

    token_ids: list[int]
    logprobs: list[float]  # log_softmax(logits / T) at each sampled token, as the trainer computes it
    text: str = ""
    finish_reason: str = "length"  # "stop" (a stop token was sampled; it is included) or "length"


def request_seed(seed: int, index: int) -> int:
    """A deterministic 63-bit seed per (call seed, request index): reproducible across calls, unrelated
    between requests (a hash, not ``seed + index``, so neighbouring calls never share a request's seed).
    Backends that seed each request on its own (vLLM, a remote server) derive it from ``sampling.seed`` so."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@runtime_checkable
class Generator(Protocol):
    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[list[Completion]]:
        """``sampling.n`` completions for each request, in request order."""
        ...

    def metrics(self) -> dict[str, float]:
        """The backend's counters, **cumulative since it was created** (e.g. vLLM's weight syncs and their
        seconds, the remote judge's requests and retries; ``{}`` when there is nothing to count). Reading them
        has no side effect: two calls with nothing in between return the same values. A logger that wants
        per-step numbers takes differences."""
        ...


@runtime_checkable
class WeightFollower(Protocol):
    def update_weights(self, model: Any) -> None:
        """Make the next ``generate`` use ``model``'s current parameters (and, for engines that follow a
        model object, its later ones)."""
        ...


class ProtocolError(AssertionError):
    """A backend broke the ``Generator`` protocol (an ``AssertionError``: pytest reports it as a failed check)."""


def _fail(backend: Any, message: str) -> None:
    raise ProtocolError(f"{type(backend).__name__}: {message}")


def check_completion(backend: Any, where: str, c: Any, sampling: SamplingParams) -> None:
    """One completion's types and invariants."""
    if not isinstance(c, Completion):
        _fail(backend, f"{where} is a {type(c).__name__}, not a Completion")
    if not isinstance(c.token_ids, list) or not all(type(t) is int for t in c.token_ids):
        _fail(backend, f"{where}.token_ids must be a list of Python ints, got {c.token_ids!r:.200}")
    if not isinstance(c.logprobs, list) or not all(isinstance(p, float) for p in c.logprobs):
        _fail(backend, f"{where}.logprobs must be a list of floats, got {c.logprobs!r:.200}")
    if len(c.token_ids) != len(c.logprobs):
        _fail(backend, f"{where} has {len(c.token_ids)} token ids but {len(c.logprobs)} log-probs")
    if not 1 <= len(c.token_ids) <= sampling.max_tokens:
        _fail(backend, f"{where} has {len(c.token_ids)} tokens; expected 1..max_tokens={sampling.max_tokens}")
    bad = [p for p in c.logprobs if math.isnan(p) or p > 1e-3]
    if bad:
        _fail(backend, f"{where}.logprobs holds values that are not log-probabilities: {bad[:5]}")
    if not isinstance(c.text, str):
        _fail(backend, f"{where}.text is a {type(c.text).__name__}, not a str")
    if c.finish_reason not in FINISH_REASONS:
        _fail(backend, f"{where}.finish_reason is {c.finish_reason!r}, not one of {FINISH_REASONS}")


def check_metrics(backend: Any) -> dict[str, float]:
    """Calls ``metrics()`` twice: a dict of str -> float, the same both times (no side effect on read)."""
    metrics = getattr(backend, "metrics", None)
    if not callable(metrics):
        _fail(backend, "has no metrics() method")
    first = metrics()
    if not isinstance(first, dict):
        _fail(backend, f"metrics() returned a {type(first).__name__}, not a dict")
    for key, value in first.items():
        if not isinstance(key, str) or not isinstance(value, float):
            _fail(backend, f"metrics() must map str -> float; got {key!r}: {value!r} ({type(value).__name__})")
    if metrics() != first:
        _fail(backend, "metrics() changed between two calls with nothing in between (they must be cumulative)")
    return first


def check_generator(backend: Any, requests: Any, sampling: SamplingParams, *, num_requests: Optional[int] = None
                    ) -> list[list[Completion]]:
    """Calls ``backend.generate(requests, sampling)`` and ``backend.metrics()`` and checks the protocol:
    one list per request, in order, of exactly ``sampling.n`` ``Completion``s, each with Python-int token ids,
    one float log-prob per token, 1..``max_tokens`` tokens, a str text and ``finish_reason`` "stop" or
    "length"; metrics a dict of str -> float that reading does not change. Returns the completions;
    raises ``ProtocolError`` naming the first violation.

    ``requests`` may be anything the backend's ``generate`` takes; ``num_requests`` (default ``len(requests)``)
    is how many results it must give, e.g. the rows of a ``ModelInputs`` batch for the JAX sampler."""
    if not callable(getattr(backend, "generate", None)):
        _fail(backend, "has no generate() method")
    if not callable(getattr(backend, "metrics", None)):
        _fail(backend, "has no metrics() method")
    out = backend.generate(requests, sampling)
    if not isinstance(out, list):
        _fail(backend, f"generate() returned a {type(out).__name__}, not a list")
    expected = len(requests) if num_requests is None else num_requests
    if len(out) != expected:
        _fail(backend, f"generate() returned {len(out)} results for {expected} requests")
    for i, group in enumerate(out):
        if not isinstance(group, list) or len(group) != sampling.n:
            size = len(group) if isinstance(group, list) else type(group).__name__
            _fail(backend, f"result {i} holds {size} completions, not a list of n={sampling.n}")
        for j, completion in enumerate(group):
            check_completion(backend, f"completion [{i}][{j}]", completion, sampling)
    check_metrics(backend)
    return out


__all__ = ["Completion", "FINISH_REASONS", "Generator", "ProtocolError", "Request", "SamplingParams", "WeightFollower",
           "check_completion", "check_generator", "check_metrics", "request_seed"]
