"""Shared-prefix prefill: the grouping rule, and the same tokens and log-probs as the unshared prompts."""

import numpy as np
import pytest

from grlhf.models.qwen_vl import from_pretrained
from grlhf.rollout.base import SamplingParams
from grlhf.rollout.jax_sampler import JaxSampler, decode, decode_shared
from grlhf.rollout.shared_prefix import cheaper_to_share, common_prefix_length, group_bucket, group_prefixes
from tests.rollout.judge_requests import judge_requests


def test_common_prefix_length():
    rows = [np.array([1, 2, 3, 4]), np.array([1, 2, 5]), np.array([1, 2, 3])]
    assert common_prefix_length(rows) == 2
    assert common_prefix_length([np.array([7, 8]), np.array([7, 8, 9])]) == 2


def test_group_bucket_is_the_next_power_of_two():
    assert [group_bucket(g) for g in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 4, 8, 16]


def test_group_prefixes_needs_the_image_inside_the_prefix():
    tokens = [np.array([1, 9, 9, 2, 3]), np.array([1, 9, 9, 2, 4, 5]), np.array([1, 9, 9, 6]), np.array([1, 9, 2])]
    same, other = b"img-a", b"img-b"
    # the first three share an image and the tokens up to index 3; the fourth has its own image
    groups = group_prefixes(tokens, vision_ends=[3, 3, 3, 2], image_keys=[same, same, same, other])
    assert groups == [([0, 1, 2], 3), ([3], 2)]
    # an image token past the common prefix: no sharing, each request cut before its last token
    groups = group_prefixes(tokens[:2], vision_ends=[5, 5], image_keys=[same, same])
    assert groups == [([0], 4), ([1], 5)]
    # text-only requests with nothing in common share nothing
    assert group_prefixes([np.array([1, 2, 3]), np.array([4, 5, 6])], [0, 0], [b"", b""]) == [([0], 2), ([1], 2)]


def test_sharing_only_when_it_pads_fewer_token_slots():
    buckets = (32, 64, 128, 256)
    # the judge: 2 groups of 20 prompts of 170 tokens sharing 124 -> 2 x 128 + 40 x 64 slots, against 40 x 256
    judge = [(list(range(20)), 124), (list(range(20, 40)), 124)]
    assert cheaper_to_share(judge, [170] * 40, buckets)
    # one pair with long suffixes among 32 lone prompts: 64 prefix rows (33 groups padded up) x 128 + 34 suffix rows
    # padded to the pair's 100-token suffixes (128), against 34 x 128
    mostly_lone = [([0, 1], 20)] + [([i], 119) for i in range(2, 34)]
    assert not cheaper_to_share(mostly_lone, [120] * 34, buckets)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def sampler_pair(request, tmp_path_factory):
    from grlhf.data.processor import load_processor
    from grlhf.tiny import write_tiny_checkpoint
    from tests.data.conftest import CORPUS

    directory = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, corpus=CORPUS)
    model, processor = from_pretrained(directory), load_processor(directory)
    make = lambda share: JaxSampler(model, processor=processor, length_buckets=(32, 64, 128, 256, 512),  # noqa: E731
                                    patch_buckets=(256, 512, 1024), share_prefix=share)
    return make(True), make(False)


def test_shared_prefix_plan(sampler_pair):
    shared, plain = sampler_pair
    requests = judge_requests()
    function, arrays = shared.plan(requests)
    assert function is decode_shared
    prefix, suffix_ids, _, _, row_group = arrays
    # two groups + the lone one, and an empty row up to a power of two
    assert prefix.input_ids.shape[0] == 4 and suffix_ids.shape[0] == len(requests)
    assert prefix.attention_mask[3].sum() == 0 and prefix.attention_mask[:3].sum(axis=1).min() > 0
    assert row_group.tolist() == [0] * 6 + [1] * 6 + [2]
    assert plain.plan(requests)[0] is decode
    assert shared.plan(requests[:1])[0] is decode  # nothing to share


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.0, max_tokens=8),
                                      SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=3)],
                         ids=["greedy", "sampled"])
def test_shared_prefix_equals_unshared(sampler_pair, sampling):
    shared, plain = sampler_pair
    requests = judge_requests()
    expected, got = plain.generate(requests, sampling), shared.generate(requests, sampling)
    assert len(got) == len(expected) == len(requests) and all(len(g) == sampling.n for g in got)
    for want, have in zip(expected, got):
        assert [c.token_ids for c in have] == [c.token_ids for c in want]
        for a, b in zip(have, want):
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_text_only_prompts_share_their_prefix_too(sampler_pair):
    shared, plain = sampler_pair
    requests = [[{"role": "user", "content": [{"type": "text", "text": f"Compare: {a} or {b}?"}]}]
                for a, b in (("red", "blue"), ("green", "red"), ("blue", "green"))]
    assert shared.plan(requests)[0] is decode_shared
    sampling = SamplingParams(temperature=0.0, max_tokens=6)
    expected, got = plain.generate(requests, sampling), shared.generate(requests, sampling)
    assert [g[0].token_ids for g in got] == [e[0].token_ids for e in expected]
    for have, want in zip(got, expected):
        np.testing.assert_allclose(have[0].logprobs, want[0].logprobs, atol=1e-5)
