"""The JAX sampler against transformers' generate (greedy), the trainer's log-probs, stops and n > 1."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from grlhf.models.qwen_vl import from_pretrained
from grlhf.rl import token_logprobs
from grlhf.rollout.base import SamplingParams, WeightFollower, check_generator
from grlhf.rollout.jax_sampler import JaxSampler
from tests.models.qwen_vl import tiny


@pytest.fixture(scope="module", params=tiny.FAMILIES)
def models(request, tmp_path_factory):
    hf = tiny.hf_model(request.param)
    return request.param, hf, from_pretrained(tiny.save(hf, tmp_path_factory.mktemp(request.param)))


def _prompt(case="left_padded"):
    return tiny.make_inputs(case)


def test_greedy_equals_transformers_generate(models):
    family, hf, model = models
    inputs = _prompt("three_padded")
    steps = 8
    with torch.no_grad():
        out = hf.generate(**tiny.torch_inputs(inputs, family), max_new_tokens=steps, do_sample=False,
                          eos_token_id=None, pad_token_id=tiny.PAD)
    expected = out[:, inputs["input_ids"].shape[1]:].numpy()
    completions = JaxSampler(model).generate(model.prepare(**inputs), SamplingParams(temperature=0.0, max_tokens=steps))
    assert [c[0].token_ids for c in completions] == expected.tolist()


def test_logprobs_equal_the_trainers(models):
    family, _, model = models
    inputs = _prompt("one_image")
    sampling = SamplingParams(n=3, temperature=0.8, max_tokens=6, seed=1)
    [samples] = JaxSampler(model).generate(model.prepare(**inputs), sampling)
    assert len(samples) == 3 and len({tuple(s.token_ids) for s in samples}) > 1  # n samples differ
    for sample in samples:
        ids = np.concatenate([inputs["input_ids"][0], sample.token_ids])[None]
        full = dict(inputs, input_ids=ids, attention_mask=np.ones_like(ids),
                    mm_token_type_ids=np.concatenate([inputs["mm_token_type_ids"][0], np.zeros(6, int)])[None])
        logits = model(**full)
        start = inputs["input_ids"].shape[1]
        trainer = token_logprobs(logits[:, start - 1:-1], jnp.asarray(ids[:, start:]), 0.8)[0]
        np.testing.assert_allclose(sample.logprobs, np.asarray(trainer), atol=1e-5)


def test_seed_reproducible_and_stops(models):
    family, _, model = models
    prompt = model.prepare(**_prompt("one_image"))
    sampler = JaxSampler(model)
    sampling = SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=5)
    first = sampler.generate(prompt, sampling)
    assert [s.token_ids for s in first[0]] == [s.token_ids for s in sampler.generate(prompt, sampling)[0]]
    # make the most frequent sampled token a stop token: rows end right after it
    stop = int(np.bincount(np.concatenate([s.token_ids for s in first[0]])).argmax())
    stopped = check_generator(sampler, prompt, SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=5,
                                                              stop_token_ids=(stop,)), num_requests=1)[0]
    for before, after in zip(first[0], stopped):
        if stop in before.token_ids:
            cut = before.token_ids.index(stop) + 1
            assert after.token_ids == before.token_ids[:cut] and after.finish_reason == "stop"
        else:
            assert after.token_ids == before.token_ids and after.finish_reason == "length"
            assert len(after.token_ids) == 10


def test_unrolled_and_early_stopping_loop_gives_the_same_samples(models, monkeypatch):
    """``DECODE_UNROLL`` steps a loop trip, stopping once every row has stopped: with 4 a 10-token call runs
    12 steps, whose last two must stop no row; tokens, log-probs and finish reasons are those of 1 a trip."""
    import dataclasses

    import jax

    from grlhf.rollout import jax_sampler

    family, _, model = models
    prompt = model.prepare(**_prompt("one_image"))
    free = SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=7)
    stop = int(np.bincount(np.concatenate([s.token_ids for s in JaxSampler(model).generate(prompt, free)[0]])).argmax())
    results = {}
    for unroll in (1, 4):
        monkeypatch.setattr(jax_sampler, "DECODE_UNROLL", unroll)
        jax.clear_caches()  # the loop is traced anew
        samples = JaxSampler(model).generate(prompt, dataclasses.replace(free, stop_token_ids=(stop,)))[0]
        results[unroll] = [(s.token_ids, np.asarray(s.logprobs).tolist(), s.finish_reason) for s in samples]
    assert results[1] == results[4]
    assert "stop" in {reason for _, _, reason in results[1]}  # the most frequent token: some row stops on it


def test_generate_from_conversations_with_buckets(tmp_path):
    from PIL import Image

    from grlhf.data.processor import load_processor
    from grlhf.tiny import write_tiny_checkpoint
    from tests.data.conftest import CORPUS

    directory = write_tiny_checkpoint(tmp_path / "tiny", "qwen2_5_vl", corpus=CORPUS)
    processor = load_processor(directory)
    model = from_pretrained(directory)
    sampler = JaxSampler(model, processor=processor, length_buckets=(128,), patch_buckets=(128,))
    assert isinstance(sampler, WeightFollower) and sampler.metrics() == {}
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in ((112, 112), (56, 84))]
    requests = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
                for image, text in zip(images, ["What colour is the circle?", "How many shapes are there?"])]
    out = check_generator(sampler, requests, SamplingParams(n=2, temperature=0.0, max_tokens=5))
    # greedy samples agree, and each request alone gives the same tokens as in the padded batch
    for request, samples in zip(requests, out):
        assert samples[0].token_ids == samples[1].token_ids
        alone = sampler.generate([request], SamplingParams(temperature=0.0, max_tokens=5))[0][0]
        assert alone.token_ids[: len(samples[0].token_ids)] == samples[0].token_ids
        assert isinstance(samples[0].text, str)


def test_update_weights_switches_the_model(models, tmp_path):
    family, _, model = models
    other = from_pretrained(tiny.save(tiny.hf_model(family, seed=1), tmp_path / "other"))
    prompt = model.prepare(**_prompt("one_image"))
    greedy = SamplingParams(temperature=0.0, max_tokens=6)
    sampler = JaxSampler(model)
    before = sampler.generate(prompt, greedy)[0][0].token_ids
    sampler.update_weights(other)
    after = sampler.generate(prompt, greedy)[0][0].token_ids
    assert after == JaxSampler(other).generate(prompt, greedy)[0][0].token_ids and after != before


def test_first_step_frequencies_match_the_models_softmax(models):
    """Chi-square on the sampler's own first step: 4000 samples of one prompt at T = 1."""
    from scipy import stats

    family, _, model = models
    inputs = _prompt("one_image")
    draws = 4000
    [samples] = JaxSampler(model).generate(model.prepare(**inputs), SamplingParams(n=draws, max_tokens=1, seed=11))
    observed = np.bincount([s.token_ids[0] for s in samples], minlength=1024).astype(np.float64)
    logits = np.asarray(model(**inputs))[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    expected = probs * draws
    common = expected >= 5  # pool the rare tokens into one cell
    observed = np.append(observed[common], observed[~common].sum())
    expected = np.append(expected[common], expected[~common].sum())
    assert common.sum() >= 5
    expected[-1] = observed.sum() - expected[:-1].sum()  # exact totals (chisquare checks them to 1e-8)
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_a_model_built_with_remat_samples_as_without(models, tmp_path):
    """Remat only matters for gradients: the sampler (a KV cache inside a jitted loop) gives the same tokens
    and log-probs (the real-model configs set model.remat=true)."""
    family, hf, model = models
    rematted = from_pretrained(tiny.save(hf, tmp_path / family), remat=True)
    prompt = _prompt("one_image")
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=3)
    expected = JaxSampler(model).generate(model.prepare(**prompt), sampling)
    got = JaxSampler(rematted).generate(rematted.prepare(**prompt), sampling)
    assert [c.token_ids for c in got[0]] == [c.token_ids for c in expected[0]]
    np.testing.assert_allclose([c.logprobs for c in got[0]], [c.logprobs for c in expected[0]], atol=1e-6)


def test_chunk_ranges_keep_runs_of_the_same_images_together():
    from grlhf.rollout.jax_sampler import chunk_ranges

    assert chunk_ranges([None] * 7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_ranges([None] * 3, 3) == [(0, 3)]
    # runs a a | b b b | c: a run is not split unless longer than a chunk
    assert chunk_ranges(list(b"aabbbc"), 3) == [(0, 2), (2, 5), (5, 6)]
    assert chunk_ranges(list(b"aabbbc"), 4) == [(0, 2), (2, 6)]
    assert chunk_ranges(list(b"aaaaab"), 2) == [(0, 2), (2, 4), (4, 6)]


@pytest.fixture(scope="module")
def conversation_model(tmp_path_factory):
    from grlhf.data.processor import load_processor
    from grlhf.tiny import write_tiny_checkpoint
    from tests.data.conftest import CORPUS

    directory = write_tiny_checkpoint(tmp_path_factory.mktemp("chunks"), "qwen2_5_vl", corpus=CORPUS)
    return from_pretrained(directory), load_processor(directory)


def _same_completions(got, want):
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in w] for w in want]
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
            assert a.finish_reason == b.finish_reason


@pytest.mark.parametrize("max_rows", [2, 3])
def test_chunked_rollout_equals_one_call(conversation_model, max_rows):
    """max_rows 2 or 3 with n = 2: one prompt per chunk (its two samples together); every row draws its own
    column of the whole call's random numbers, and each chunk is padded to the call's length bucket."""
    from PIL import Image

    model, processor = conversation_model
    rng = np.random.default_rng(1)
    sizes = [(56, 56), (56, 84), (84, 56), (56, 56), (84, 84)]
    texts = ["What colour is the circle?", "How many shapes are there?", "Describe it.", "Is there a square here, "
             "or only circles and triangles?", "Count."]
    requests = [[{"role": "user", "content": [{"type": "image", "image": Image.fromarray(
        (rng.random((h, w, 3)) * 255).astype(np.uint8))}, {"type": "text", "text": text}]}]
        for (h, w), text in zip(sizes, texts)]
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=3)
    buckets = dict(length_buckets=(64, 128, 256), patch_buckets=(128, 256, 512))
    whole = JaxSampler(model, processor=processor, **buckets)
    chunked = JaxSampler(model, processor=processor, max_rows=max_rows, **buckets)
    assert chunked.chunks(chunked._encode(requests), sampling.n) == [(i, i + 1) for i in range(5)]
    want = whole.generate(requests, sampling)
    assert len({tuple(c.token_ids) for g in want for c in g}) > 5  # the samples differ
    _same_completions(check_generator(chunked, requests, sampling), want)


def test_chunked_shared_prefix_rollout_equals_one_call(conversation_model):
    """Judge prompts (two groups of six sharing an image and question, one lone prompt), n = 2, at most 12 rows:
    each group is one chunk, prefilled once per prefix as in the one call."""
    from grlhf.rollout.jax_sampler import decode_shared
    from tests.rollout.judge_requests import judge_requests

    model, processor = conversation_model
    requests = judge_requests()
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=5, seed=7)
    buckets = dict(length_buckets=(32, 64, 128, 256, 512), patch_buckets=(256, 512, 1024))
    whole = JaxSampler(model, processor=processor, **buckets)
    chunked = JaxSampler(model, processor=processor, max_rows=12, **buckets)
    encoded = chunked._encode(requests)
    assert chunked.chunks(encoded, sampling.n) == [(0, 6), (6, 12), (12, 13)]
    assert chunked._plan_encoded(encoded[:6])[0] is decode_shared and whole.plan(requests)[0] is decode_shared
    _same_completions(chunked.generate(requests, sampling), whole.generate(requests, sampling))
