"""A remote judge: the rollout protocol over an OpenAI-compatible ``/v1/chat/completions`` endpoint.

This is the scale-out path for judging: a fleet of ``vllm serve`` replicas (behind one address) serves the
frozen GRM, and the group judge sends it its pair prompts unchanged. Each request becomes one HTTP call
asking for ``n`` choices; calls run on a thread pool, at most ``max_concurrency`` in flight per backend.

Retries: connection errors, timeouts, HTTP 429 and 5xx are retried up to ``max_retries`` times (so at most
``1 + max_retries`` attempts) after ``backoff * 2**k * U(0.5, 1.5)`` seconds (k = retries so far; at least a
numeric ``Retry-After``; at most ``MAX_DELAY``). Any other 4xx is a ``ValueError`` at once. A request that
still fails fails the whole ``generate`` call: queued requests are cancelled, running ones stop retrying
and are waited for, and nothing partial is returned.

vLLM extras sent beside the OpenAI fields when ``vllm_extras`` (the endpoint is vLLM; default): ``top_k``
(only when > 0), ``stop_token_ids`` (when given) and ``return_token_ids`` (vLLM answers with
``choices[i].token_ids``; servers without it leave ids empty). Other OpenAI-compatible servers may reject
unknown fields: ``vllm_extras=False`` sends the OpenAI fields only.
Log-probs are the server's (vLLM's default reports the raw model distribution, not the tempered one the JAX
sampler reports); the judge is frozen, so nothing trains on them.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import random
import threading
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from grlhf.errors import UserError
from grlhf.rollout.base import Completion, Request, SamplingParams, request_seed

MAX_DELAY = 60.0  # seconds: the longest single backoff sleep
FINISH_REASONS = {"stop": "stop", "length": "length"}  # others (e.g. "abort") are kept as the server says


class RemoteJudgeError(UserError, RuntimeError):
    """A request that still failed after every retry; names the endpoint, the request and the last cause."""

    def __init__(self, endpoint: str, index: int, attempts: int, cause: BaseException):
        super().__init__(f"remote judge {endpoint}: request {index} failed after {attempts} attempt(s); "
                         f"last error: {type(cause).__name__}: {cause}")
        self.endpoint, self.index, self.attempts, self.cause = endpoint, index, attempts, cause


class RemoteJudgeUnreachable(UserError, RuntimeError):
    """The endpoint did not answer the health check at start (``OpenAIJudge.check_health``)."""


class _Retryable(Exception):
    """A transient failure (connection, timeout, 429, 5xx, truncated body); ``delay`` is a Retry-After hint."""

    def __init__(self, message: str, delay: float = 0.0):
        super().__init__(message)
        self.delay = delay


class _Stopped(Exception):
    """Another request of the same call failed; this one gave up without another attempt."""


def chat_url(base_url: str) -> str:
    """``{base}/v1/chat/completions`` whether or not ``base_url`` already ends with ``/v1``."""
    base = base_url.rstrip("/")
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def models_url(base_url: str) -> str:
    """``{base}/v1/models`` (the OpenAI model list) whether or not ``base_url`` already ends with ``/v1``."""
    base = base_url.rstrip("/")
    return f"{base}/models" if base.endswith("/v1") else f"{base}/v1/models"


def image_url(image: Any) -> str:
    """A PIL image, array or file path as a PNG data URL; an http(s) or data URL is passed through."""
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            image = opened.copy()
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot send an image of type {type(image).__name__}")
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless; level 1: encoding time, not bytes, matters
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(request: Request, cache: Optional[dict[int, str]] = None) -> list[dict[str, Any]]:
    """HF chat messages (PIL images inline) -> OpenAI chat messages (images as data URLs).

    ``cache`` maps ``id(image)`` to its URL, so an image shared by many pair prompts is encoded once per call.
    """
    cache = {} if cache is None else cache
    messages = []
    for message in request:
        content = message["content"]
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image":
                image = part["image"]
                if id(image) not in cache:
                    cache[id(image)] = image_url(image)
                parts.append({"type": "image_url", "image_url": {"url": cache[id(image)]}})
            elif kind == "image_url":
                parts.append(part)
            else:
                raise ValueError(f"the remote judge cannot send a content part of type {kind!r}")
        messages.append({"role": message["role"], "content": parts})
    return messages


def request_body(model: str, messages: list[dict[str, Any]], sampling: SamplingParams, index: int, *,
                 vllm_extras: bool = True) -> dict[str, Any]:
    """The JSON body for one request: OpenAI fields, plus (``vllm_extras``) the vLLM extras it accepts."""
    body: dict[str, Any] = {
        "model": model, "messages": messages, "n": sampling.n, "temperature": sampling.temperature,
        "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "seed": request_seed(sampling.seed, index),
        "logprobs": True,
    }
    if not vllm_extras:
        return body
    body["return_token_ids"] = True
    if sampling.top_k > 0:
        body["top_k"] = sampling.top_k
    if sampling.stop_token_ids:
        body["stop_token_ids"] = list(sampling.stop_token_ids)
    return body


def parse_choices(response: dict[str, Any], n: int) -> list[Completion]:
    """The ``n`` choices of a chat-completions response as Completions, ordered by ``index``."""
    choices = sorted(response.get("choices") or [], key=lambda choice: choice.get("index", 0))
    if len(choices) != n:
        raise ValueError(f"asked for n={n} choices, the server returned {len(choices)}")
    completions = []
    for choice in choices:
        content = ((choice.get("logprobs") or {}).get("content")) or []
        completions.append(Completion(
            token_ids=[int(t) for t in choice.get("token_ids") or []],
            logprobs=[float(entry["logprob"]) for entry in content],
            text=(choice.get("message") or {}).get("content") or "",
            finish_reason=FINISH_REASONS.get(choice.get("finish_reason"), str(choice.get("finish_reason")))))
    return completions


def _server_message(raw: bytes) -> str:
    """The ``message`` of an OpenAI or vLLM error body, else the body's start."""
    text = raw.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:500]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(payload, dict) and payload.get("message"):
        return str(payload["message"])
    return text[:500]


def _retry_after(headers: Any) -> float:
    """A numeric ``Retry-After`` header in seconds, else 0."""
    try:
        return max(float(headers.get("Retry-After", 0) or 0), 0.0)
    except (TypeError, ValueError):
        return 0.0


class OpenAIJudge:
    """A ``Generator`` (``rollout.base``) that judges on a remote OpenAI-compatible server (e.g. ``vllm serve``).

    It is not a ``WeightFollower``: the server holds a fixed model (the GRM is frozen in stage 2); to judge with
    new weights, export them and restart the server(s).

    ``api_key`` is sent as ``Authorization: Bearer``; this class does not read the environment (the config's
    ``reward.judge.api_key_env`` names the variable its caller reads), so a key meant for one service is never
    sent to another endpoint by accident. ``stats`` counts the last ``generate`` call
    (requests, attempts, retries, failures); ``totals`` counts every call, and ``metrics()`` reports them.
    """

    def __init__(self, base_url: str, model: str, *, api_key: Optional[str] = None, max_concurrency: int = 16,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5, vllm_extras: bool = True):
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(f"need max_concurrency >= 1, max_retries >= 0, timeout > 0, backoff >= 0; got "
                             f"{max_concurrency}, {max_retries}, {timeout}, {backoff}")
        self.base_url, self.url, self.model = base_url, chat_url(base_url), model
        self.max_concurrency, self.timeout = max_concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.vllm_extras = vllm_extras
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._slots = threading.BoundedSemaphore(max_concurrency)  # shared by concurrent generate calls
        self._lock = threading.Lock()
        self._random = random.Random()
        self.stats = self._zero_stats()
        self.totals = self._zero_stats()

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        return {"requests": 0, "attempts": 0, "retries": 0, "failures": 0}

    def _count(self, stats: dict[str, int], key: str) -> None:
        with self._lock:
            stats[key] += 1
            self.totals[key] += 1

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[list[Completion]]:
        """``sampling.n`` completions per request, in request order; raises if any request fails for good."""
        stats = self.stats = self._zero_stats()
        if not requests:
            return []
        cache: dict[int, str] = {}
        bodies = [json.dumps(request_body(self.model, openai_messages(request, cache), sampling, index,
                                           vllm_extras=self.vllm_extras)).encode()
                  for index, request in enumerate(requests)]
        stop = threading.Event()
        results: list[Optional[list[Completion]]] = [None] * len(bodies)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(bodies)),
                                thread_name_prefix="openai-judge") as pool:
            futures = {pool.submit(self._request, body, index, sampling.n, stop, stats): index
                       for index, body in enumerate(bodies)}
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(future.exception() is not None for future in done):
                stop.set()
                for future in futures:
                    future.cancel()
                wait(futures)  # the running ones see ``stop`` and return before another attempt
        errors = sorted((futures[f], f.exception()) for f in futures
                        if not f.cancelled() and f.exception() is not None
                        and not isinstance(f.exception(), _Stopped))
        if errors:
            raise errors[0][1]
        for future, index in futures.items():
            results[index] = future.result()
        return results  # type: ignore[return-value]

    def _request(self, body: bytes, index: int, n: int, stop: threading.Event, stats: dict[str, int]
                 ) -> list[Completion]:
        """One request with retries: its ``n`` completions, or the error that ends the call."""
        self._count(stats, "requests")
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if stop.is_set():
                raise _Stopped()
            self._count(stats, "attempts")
            try:
                response = self._post(body)
            except _Retryable as error:
                if attempt + 1 == attempts:
                    self._count(stats, "failures")
                    raise RemoteJudgeError(self.url, index, attempts, error) from error
                self._count(stats, "retries")
                delay = self.backoff * 2 ** attempt * (0.5 + self._random.random())
                if stop.wait(min(max(delay, error.delay), MAX_DELAY)):
                    raise _Stopped()
                continue
            except ValueError as error:
                self._count(stats, "failures")
                raise ValueError(f"remote judge {self.url}: request {index}: {error}") from error
            try:
                return parse_choices(response, n)
            except (ValueError, KeyError, TypeError, AttributeError) as error:  # a malformed 200 answer
                self._count(stats, "failures")
                raise RemoteJudgeError(self.url, index, attempt + 1, error) from error
        raise AssertionError("unreachable")

    def _post(self, body: bytes) -> dict[str, Any]:
        """One HTTP attempt: the decoded JSON, ``_Retryable`` for transient failures, ``ValueError`` for 4xx."""
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with self._slots:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    raw = reply.read()
            except urllib.error.HTTPError as error:
                try:
                    message = _server_message(error.read() or b"")
                except (OSError, http.client.HTTPException):
                    message = "(no readable body)"
                if error.code == 429 or error.code >= 500:
                    raise _Retryable(f"HTTP {error.code}: {message}", _retry_after(error.headers)) from error
                raise ValueError(f"HTTP {error.code}: {message}") from error
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                raise _Retryable(f"{type(reason).__name__}: {reason}") from error
        try:
            return json.loads(raw)
        except ValueError as error:  # a body cut short by a dying replica or proxy
            raise _Retryable(f"invalid JSON in the response ({len(raw)} bytes): {error}") from error

    def check_health(self) -> None:
        """One ``GET /v1/models`` at start, so a dead or wrong endpoint is an error now, not after a run in
        which no judgment was needed (every answer truncated). ``RemoteJudgeUnreachable`` when there is no
        HTTP answer within ``timeout`` or the answer is a 5xx, or when the listed models omit ``model``; any
        other answer (a server without the model list) counts as up."""
        where = f"remote judge {self.base_url} (reward.judge.url)"
        request = urllib.request.Request(models_url(self.base_url), headers=self.headers, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as error:
            if error.code >= 500:
                raise RemoteJudgeUnreachable(f"{where} answers the health check with HTTP {error.code}") from None
            return
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RemoteJudgeUnreachable(f"{where} does not answer: {type(reason).__name__}: {reason}; is the "
                                         f"server (e.g. vllm serve) up and the address right?") from None
        try:
            served = [entry["id"] for entry in json.loads(raw)["data"]]
        except (ValueError, KeyError, TypeError):
            return  # up, but no OpenAI model list to check the name against
        if served and self.model not in served:
            raise RemoteJudgeUnreachable(f"{where} serves {served}, not {self.model!r}; set reward.judge.model to "
                                         "the served name")

    def metrics(self) -> dict[str, float]:
        """Cumulative since the judge was created: ``remote_requests``, ``remote_attempts``,
        ``remote_retries``, ``remote_failures``."""
        with self._lock:
            return {f"remote_{key}": float(value) for key, value in self.totals.items()}


__all__ = ["OpenAIJudge", "RemoteJudgeError", "RemoteJudgeUnreachable", "chat_url", "image_url", "models_url",
           "openai_messages", "parse_choices", "request_body"]
