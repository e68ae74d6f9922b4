"""The rollout protocol's check calls the methods: fakes that break the protocol fail it, a good fake passes."""

import dataclasses

import pytest

from grlhf.rollout.base import (Completion, Generator, ProtocolError, SamplingParams, WeightFollower, check_generator,
                                request_seed)

REQUESTS = [[{"role": "user", "content": [{"type": "text", "text": f"q{i}"}]}] for i in range(3)]
SAMPLING = SamplingParams(n=2, max_tokens=4)


class Good:
    """``n`` completions per request, cumulative counters."""

    def __init__(self):
        self.requests = 0

    def generate(self, requests, sampling):
        self.requests += len(requests)
        return [[Completion([7, 8], [-0.5, -1.0], "ab", "stop") for _ in range(sampling.n)] for _ in requests]

    def metrics(self):
        return {"requests": float(self.requests)}


class NoMetrics:
    def generate(self, requests, sampling):
        return Good().generate(requests, sampling)


class OneTooFew(Good):
    def generate(self, requests, sampling):
        return [group[:-1] for group in super().generate(requests, sampling)]


class DropsARequest(Good):
    def generate(self, requests, sampling):
        return super().generate(requests, sampling)[:-1]


def broken(**change):
    """A backend whose every completion has ``change`` applied."""

    class Broken(Good):
        def generate(self, requests, sampling):
            return [[dataclasses.replace(c, **change) for c in group] for group in super().generate(requests, sampling)]

    return Broken()


class ResettingMetrics(Good):
    """Per-read counters (reset on read): not the protocol's cumulative metrics."""

    def metrics(self):
        out, self.requests = {"requests": float(self.requests)}, 0
        return out


class IntMetrics(Good):
    def metrics(self):
        return {"requests": self.requests}


def test_a_good_backend_passes_and_its_completions_come_back():
    backend = Good()
    out = check_generator(backend, REQUESTS, SAMPLING)
    assert len(out) == 3 and all(len(group) == 2 for group in out) and out[0][0].token_ids == [7, 8]
    assert isinstance(backend, Generator) and not isinstance(backend, WeightFollower)


@pytest.mark.parametrize("backend, message", [
    (NoMetrics(), "no metrics"),
    (OneTooFew(), "holds 1 completions, not a list of n=2"),
    (DropsARequest(), "2 results for 3 requests"),
    (broken(finish_reason="abort"), "finish_reason is 'abort'"),
    (broken(logprobs=[-0.5]), "2 token ids but 1 log-probs"),
    (broken(token_ids=[], logprobs=[]), "0 tokens"),
    (broken(token_ids=[1, 2, 3, 4, 5], logprobs=[0.0] * 5), "5 tokens; expected 1..max_tokens=4"),
    (broken(token_ids=[7.0, 8.0]), "Python ints"),
    (broken(logprobs=[-0.5, float("nan")]), "not log-probabilities"),
    (broken(logprobs=[-0.5, 2.0]), "not log-probabilities"),
    (broken(text=None), "text is a NoneType"),
    (ResettingMetrics(), "changed between two calls"),
    (IntMetrics(), "str -> float"),
], ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_a_broken_backend_fails_the_check(backend, message):
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_generator(backend, REQUESTS, SAMPLING)


def test_isinstance_alone_cannot_tell_a_broken_backend():
    """Why the check calls the methods: ``isinstance`` compares names only."""
    assert isinstance(OneTooFew(), Generator)
    assert not isinstance(NoMetrics(), Generator)


def test_request_seeds_are_reproducible_distinct_and_63_bit():
    seeds = [request_seed(11, i) for i in range(100)]
    assert seeds == [request_seed(11, i) for i in range(100)] and len(set(seeds)) == 100
    assert all(0 <= s < 2**63 for s in seeds) and request_seed(12, 0) not in seeds
