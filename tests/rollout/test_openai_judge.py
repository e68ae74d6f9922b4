"""The remote judge against a scripted OpenAI-compatible server on 127.0.0.1: request bodies, parsing, retries,
errors, the concurrency bound, and GroupJudge on top."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import numpy as np
import pytest
from PIL import Image

from grlhf.reward.judge import Group, GroupJudge
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.rollout.base import Generator, SamplingParams, WeightFollower, check_generator, request_seed
from grlhf.errors import UserError
from grlhf.rollout.openai_judge import OpenAIJudge, RemoteJudgeError, RemoteJudgeUnreachable, chat_url

FINISH = ["stop", "length", "abort"]


def body_text(body: dict[str, Any]) -> str:
    """All text parts of a request body: the key the fake server scripts by."""
    return "".join(part["text"] for message in body["messages"] for part in message["content"]
                   if part["type"] == "text")


def body_image(body: dict[str, Any]) -> np.ndarray:
    """The first image of a request body, decoded from its PNG data URL."""
    url = next(part["image_url"]["url"] for message in body["messages"] for part in message["content"]
               if part["type"] == "image_url")
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))))


class FakeServer:
    """An OpenAI-compatible chat-completions server whose answers a script decides.

    ``script(key, attempt)`` returns None (answer), "drop" (close without a reply), an HTTP status, or
    ("sleep", seconds) before answering; ``text(key, choice)`` writes each choice's content.
    """

    def __init__(self, script: Optional[Callable] = None, text: Optional[Callable] = None, delay: float = 0.0,
                 token_ids: bool = True):
        self.script = script or (lambda key, attempt: None)
        self.text = text or (lambda key, choice: f"{key} #{choice}")
        self.delay, self.token_ids = delay, token_ids
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.auth: list[Optional[str]] = []
        self.attempts: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                fake.handle(self)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64

            def handle_error(self, request, client_address):
                pass  # a client that timed out leaves a broken pipe behind; expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        key = body_text(body)
        with self.lock:
            self.bodies.append(body)
            self.paths.append(handler.path)
            self.auth.append(handler.headers.get("Authorization"))
            attempt = self.attempts[key]
            self.attempts[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
        finally:
            # counted while the request is being worked on, before the reply: once the reply is sent the
            # client frees its slot, possibly before this thread gets to run again
            with self.lock:
                self.in_flight -= 1
        action = self.script(key, attempt)
        if isinstance(action, tuple):
            time.sleep(action[1])
            action = None
        if action == "drop":
            handler.close_connection = True
            return
        if isinstance(action, int):
            self.send(handler, action, {"error": {"message": f"scripted {action}", "code": action}})
            return
        self.send(handler, 200, self.answer(key, body["n"]))

    def answer(self, key: str, n: int) -> dict[str, Any]:
        choices = []
        for c in range(n):
            choice = {"index": c, "message": {"role": "assistant", "content": self.text(key, c)},
                      "logprobs": {"content": [{"token": "t", "logprob": -0.25 * (c + t), "top_logprobs": []}
                                               for t in range(3)]},
                      "finish_reason": FINISH[c % len(FINISH)]}
            if self.token_ids:
                choice["token_ids"] = [100 * c + t for t in range(3)]
            choices.append(choice)
        return {"id": "chatcmpl-x", "object": "chat.completion", "model": "judge", "choices": choices[::-1]}

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> FakeServer:
        servers.append(FakeServer(**kw))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def image(seed: int, size=(7, 5)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def requests_(count: int, img: Optional[Image.Image] = None) -> list:
    """``count`` one-turn requests with distinct texts (``q0``, ``q1``, ...), each with ``img`` if given."""
    out = []
    for index in range(count):
        content = ([{"type": "image", "image": img}] if img is not None else []) + [{"type": "text",
                                                                                    "text": f"q{index}"}]
        out.append([{"role": "user", "content": content}])
    return out


def judge(url: str, **kw) -> OpenAIJudge:
    return OpenAIJudge(url, "judge-model", **{"backoff": 0.01, **kw})


def test_chat_url_with_or_without_v1():
    assert chat_url("http://h:8000") == chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"


def test_request_bodies_are_well_formed_and_seeds_reproducible(serve):
    server = serve()
    img = image(0)
    backend = judge(server.url + "/v1", api_key="sk-test")
    sampling = SamplingParams(n=2, temperature=0.7, top_p=0.9, top_k=20, max_tokens=33, stop_token_ids=(5, 7),
                              seed=11)
    check_generator(backend, requests_(4, img), sampling)
    first = sorted(server.bodies, key=body_text)
    assert [body_text(b) for b in first] == ["q0", "q1", "q2", "q3"]
    assert set(server.paths) == {"/v1/chat/completions"} and set(server.auth) == {"Bearer sk-test"}
    for body in first:
        assert body["model"] == "judge-model" and body["n"] == 2 and body["temperature"] == 0.7
        assert body["top_p"] == 0.9 and body["top_k"] == 20 and body["max_tokens"] == 33
        assert body["stop_token_ids"] == [5, 7] and body["logprobs"] is True and body["return_token_ids"] is True
        content = body["messages"][0]["content"]
        assert body["messages"][0]["role"] == "user" and [p["type"] for p in content] == ["image_url", "text"]
        np.testing.assert_array_equal(body_image(body), np.asarray(img))
    seeds = [b["seed"] for b in first]
    assert len(set(seeds)) == 4 and seeds == [request_seed(11, i) for i in range(4)]

    # the same call again sends the same seeds; another call seed sends others; no top_k / stop ids when unset
    backend.generate(requests_(4, img), sampling)
    again = sorted(server.bodies[4:], key=body_text)
    assert [b["seed"] for b in again] == seeds
    plain = judge(server.url)  # no /v1 in the base URL, no key
    plain.generate(requests_(4), SamplingParams(seed=12))
    other = sorted(server.bodies[8:], key=body_text)
    assert not set(b["seed"] for b in other) & set(seeds)
    assert all("top_k" not in b and "stop_token_ids" not in b for b in other)
    assert server.paths[-1] == "/v1/chat/completions" and server.auth[-1] is None


def test_completions_come_back_in_request_order_and_parsed(serve):
    # earlier requests answer later, and choices come back in reverse index order
    server = serve(script=lambda key, attempt: ("sleep", 0.02 * (5 - int(key[1:]))))
    results = judge(server.url).generate(requests_(5), SamplingParams(n=3))
    assert len(results) == 5 and all(len(r) == 3 for r in results)
    for index, completions in enumerate(results):
        for c, completion in enumerate(completions):
            assert completion.text == f"q{index} #{c}"
            assert completion.token_ids == [100 * c, 100 * c + 1, 100 * c + 2]
            assert completion.logprobs == [-0.25 * c, -0.25 * (c + 1), -0.25 * (c + 2)]
            assert completion.finish_reason == FINISH[c]
    # a server without token ids: ids empty, log-probs kept
    bare = serve(token_ids=False)
    (completion,), = judge(bare.url).generate(requests_(1), SamplingParams())
    assert completion.token_ids == [] and completion.logprobs == [0.0, -0.25, -0.5] and completion.text == "q0 #0"


def test_transient_failures_are_retried_and_each_request_answered_once(serve):
    failing = {"q1": [503], "q3": ["drop"], "q4": [429, 502]}

    def script(key, attempt):
        plan = failing.get(key, [])
        return plan[attempt] if attempt < len(plan) else None

    server = serve(script=script)
    backend = judge(server.url, max_retries=4)
    results = check_generator(backend, requests_(6), SamplingParams(n=2))
    assert [[c.text for c in r] for r in results] == [[f"q{i} #0", f"q{i} #1"] for i in range(6)]
    assert len(server.bodies) == 6 + 1 + 1 + 2
    assert server.attempts == Counter({"q0": 1, "q1": 2, "q2": 1, "q3": 2, "q4": 3, "q5": 1})
    assert backend.stats == {"requests": 6, "attempts": 10, "retries": 4, "failures": 0}
    # metrics() are cumulative over calls; stats are the last call's
    backend.generate(requests_(1), SamplingParams())
    assert backend.stats == {"requests": 1, "attempts": 1, "retries": 0, "failures": 0}
    assert backend.metrics() == {"remote_requests": 7.0, "remote_attempts": 11.0, "remote_retries": 4.0,
                                 "remote_failures": 0.0}


def test_a_timeout_is_retried(serve):
    server = serve(script=lambda key, attempt: ("sleep", 1.0) if key == "q1" and attempt == 0 else None)
    backend = judge(server.url, timeout=0.3)
    results = backend.generate(requests_(3), SamplingParams())
    assert [r[0].text for r in results] == ["q0 #0", "q1 #0", "q2 #0"]
    assert server.attempts["q1"] == 2 and backend.stats["retries"] == 1


def test_a_request_that_keeps_failing_fails_the_whole_call(serve):
    server = serve(script=lambda key, attempt: 503 if key == "q2" else None)
    backend = judge(server.url, max_retries=2)
    with pytest.raises(RemoteJudgeError, match=r"request 2 failed after 3 attempt\(s\).*HTTP 503") as info:
        backend.generate(requests_(5), SamplingParams())
    assert info.value.index == 2 and info.value.attempts == 3 and server.url in str(info.value)
    assert server.attempts["q2"] == 3 and backend.stats["failures"] == 1


def test_a_client_error_is_a_value_error_without_retries(serve):
    server = serve(script=lambda key, attempt: 400 if key == "q0" else None)
    backend = judge(server.url, max_retries=4)
    with pytest.raises(ValueError, match=r"request 0: HTTP 400: scripted 400"):
        backend.generate(requests_(1), SamplingParams())
    assert server.attempts["q0"] == 1 and backend.stats["retries"] == 0 and backend.stats["failures"] == 1


def test_a_dead_server_raises_after_every_attempt(serve):
    server = serve()
    server.close()
    backend = judge(server.url, max_retries=2)
    with pytest.raises(RemoteJudgeError, match="after 3 attempt") as info:
        backend.generate(requests_(1), SamplingParams())
    assert f"{server.url}/v1/chat/completions" in str(info.value) and info.value.attempts == 3
    assert backend.stats == {"requests": 1, "attempts": 3, "retries": 2, "failures": 1}


def test_concurrency_never_exceeds_the_limit(serve):
    server = serve(delay=0.05)
    results = judge(server.url, max_concurrency=3).generate(requests_(10), SamplingParams())
    assert [r[0].text for r in results] == [f"q{i} #0" for i in range(10)]
    assert 2 <= server.max_in_flight <= 3


def test_a_remote_judge_generates_but_does_not_follow_weights():
    backend = judge("http://127.0.0.1:9")
    assert isinstance(backend, Generator) and not isinstance(backend, WeightFollower)
    assert backend.metrics() == {"remote_requests": 0.0, "remote_attempts": 0.0, "remote_retries": 0.0,
                                 "remote_failures": 0.0}


def test_group_judge_over_the_remote_backend(serve):
    values = {"a": 2.0, "b": 5.0, "c": 8.0, "x": 7.0, "y": 3.0, "z": 4.0}

    def text(key, choice):
        first = re.search(r"# Response 1: (.*)\n", key).group(1)
        second = re.search(r"# Response 2: (.*)\n", key).group(1)
        return f"Analysis: ...\nScores: \\boxed{{{values[first]:g}, {values[second]:g}}}"

    server = serve(text=text)
    images = [image(1), image(2, (9, 4))]
    groups = [Group("what?", images[0], ["a", "b", "c"]), Group("where?", images[1], ["x", "y", "z"])]
    result = GroupJudge(judge(server.url), template=COMPACT_JUDGE_TEMPLATE, samples=2)(groups)
    for g, group in enumerate(groups):
        for i in range(3):
            for j in range(3):
                expected = [values[group.answers[i]], values[group.answers[j]]] if i != j else [0.0, 0.0]
                assert result.pair_scores[g, i, j].tolist() == expected and result.pair_valid[g, i, j] == (i != j)
        np.testing.assert_allclose(result.scores[g], [values[a] for a in group.answers])
    assert len(server.bodies) == 12 and all(b["n"] == 2 for b in server.bodies)
    for body in server.bodies:  # each pair prompt carries its own group's image
        g = 0 if "what?" in body_text(body) else 1
        np.testing.assert_array_equal(body_image(body), np.asarray(images[g]))
    assert result.metrics["judge_calls"] == 24 and result.metrics["judge_failures"] == 0
    assert result.metrics["judge_tokens"] == 24 * 3


class ModelListServer:
    """Answers ``GET /v1/models`` with ``status`` and ``payload`` (the health check's only request)."""

    def __init__(self, status: int, payload: Any):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                FakeServer.send(self, status, payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status, payload, error", [
    (200, {"object": "list", "data": [{"id": "judge-model"}, {"id": "other"}]}, None),
    (404, {"error": "no model list here"}, None),  # up, without the OpenAI model list: nothing to check
    (200, {"data": [{"id": "other"}]}, r"serves \['other'\], not 'judge-model'; set reward.judge.model"),
    (503, {"error": "loading"}, "answers the health check with HTTP 503"),
])
def test_the_health_check_accepts_a_live_endpoint_and_names_what_is_wrong(status, payload, error):
    server = ModelListServer(status, payload)
    try:
        backend = judge(server.url)
        if error is None:
            backend.check_health()
        else:
            with pytest.raises(RemoteJudgeUnreachable, match=error):
                backend.check_health()
    finally:
        server.close()


def test_the_health_check_of_a_dead_endpoint_is_a_user_error_naming_it():
    server = ModelListServer(200, {})
    server.close()
    with pytest.raises(RemoteJudgeUnreachable, match=rf"remote judge {server.url} \(reward.judge.url\) does not "
                                                     r"answer: ConnectionRefusedError") as info:
        judge(server.url, timeout=5).check_health()
    assert isinstance(info.value, UserError)
