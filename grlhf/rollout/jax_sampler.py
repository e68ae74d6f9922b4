"""The JAX sampler: batched multimodal generation with a KV cache, sharing the trainer's weights.

Each prompt is prefilled once; its cache and last logits are repeated for its ``n`` samples, which
then decode in one jitted loop with a cache sized to the prompt bucket + ``max_tokens``. M-RoPE decode
positions continue from the last prompt position + 1 on all three rows (transformers' ``generate``).
Rows stop on a stop token; tokens after the stop are padding and are not reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhf.models.qwen_vl.inputs import ModelInputs
from grlhf.models.qwen_vl.sharding import shard_inputs, to_host
from grlhf.rollout.sampling import sample_tokens

# Decode steps per loop iteration: fewer loop trips; 63 vs 75 ms for bench/rollout.py's 64 tokens.
DECODE_UNROLL = 4


@dataclass(frozen=True)
class SamplingParams:
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
    token_ids: list[int]
    logprobs: list[float]  # log_softmax(logits / T) at each sampled token, as the trainer computes it
    text: str = ""
    finish_reason: str = "length"  # "stop" (a stop token was sampled; it is included) or "length"


@partial(nnx.jit, static_argnames=("max_tokens", "n", "temperature", "top_k", "top_p", "stop_ids"))
def decode(model, prompt: ModelInputs, key: jax.Array, *, max_tokens: int, n: int, temperature: float,
           top_k: int, top_p: float, stop_ids: tuple[int, ...]):
    """Prefill, then sample ``max_tokens`` per row for ``n`` copies of each prompt (rows grouped by prompt).

    Returns ``(tokens [B*n, max_tokens], logprobs [B*n, max_tokens], lengths [B*n], stopped [B*n])``.
    """
    batch, length = prompt.input_ids.shape
    slots = length + max_tokens
    key_mask = jnp.concatenate([prompt.attention_mask, jnp.ones((batch, max_tokens), prompt.attention_mask.dtype)], 1)
    cache = model.init_cache(batch, slots)
    logits, cache = model.forward_cached(prompt.input_ids, key_mask, prompt.position_ids, cache, 0, prompt.vision,
                                         prompt.token_types, last_only=True)
    # generate continues from the last valid prompt position + 1, per M-RoPE row (not the max, which
    # differs after a prompt-final video)
    last_index = length - 1 - jnp.argmax(prompt.attention_mask[:, ::-1].astype(bool), axis=-1)
    last_position = prompt.position_ids[:, jnp.arange(batch), last_index]  # [3, B]
    repeat = lambda t: jnp.repeat(t, n, axis=0)  # noqa: E731  samples of one prompt are adjacent
    cache = jax.tree.map(repeat, cache)
    key_mask, next_position = repeat(key_mask), jnp.repeat(last_position + 1, n, axis=1)
    last_logits = repeat(logits[:, -1])
    rows = batch * n
    stop = jnp.asarray(stop_ids, jnp.int32)

    def step(i, state):
        cache, last_logits, tokens, logprobs, done, key = state
        key, sub = jax.random.split(key)
        token, logprob = sample_tokens(sub, last_logits, temperature=temperature, top_k=top_k, top_p=top_p)
        token = jnp.where(done, 0, token)
        tokens = tokens.at[:, i].set(token)
        logprobs = logprobs.at[:, i].set(jnp.where(done, 0.0, logprob))
        newly_done = ~done & jnp.any(token[:, None] == stop[None, :], axis=-1)
        position = (next_position + i)[:, :, None]
        logits, cache = model.forward_cached(token[:, None], key_mask, position, cache, length + i)
        return cache, logits[:, 0], tokens, logprobs, done | newly_done, key

    state = (cache, last_logits, jnp.zeros((rows, max_tokens), jnp.int32), jnp.zeros((rows, max_tokens), jnp.float32),
             jnp.zeros((rows,), bool), key)
    _, _, tokens, logprobs, done, _ = jax.lax.fori_loop(0, max_tokens, step, state, unroll=DECODE_UNROLL)
    is_stop = jnp.any(tokens[..., None] == stop, axis=-1)
    first_stop = jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1) + 1, max_tokens)
    return tokens, logprobs, first_stop, done


class JaxSampler:
    """``generate(requests, sampling) -> [[Completion] * n per request]`` on the trainer's model.

    Requests are chat conversations (with a ``processor``: tokenised, left-padded to a length bucket,
    images padded to a patch bucket, so a run compiles a few programs) or an already prepared
    ``ModelInputs`` batch; with ``mesh``, prompts are split over its batch axes. ``update_weights``
    points at new parameters: the sampler holds the model object itself, so sharing the trainer's arrays
    costs no copy.
    """

    def __init__(self, model, tokenizer=None, *, processor=None, eos_token_ids: Sequence[int] = (),
                 length_buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048, 4096),
                 patch_buckets: Optional[Sequence[int]] = None, mesh=None):
        self.model, self.mesh = model, mesh
        self.processor = processor
        tokenizer = tokenizer if tokenizer is not None or processor is None else processor.tokenizer
        self.tokenizer = tokenizer
        self.length_buckets, self.patch_buckets = tuple(length_buckets), patch_buckets
        eos = list(eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = tuple(dict.fromkeys(eos))

    def update_weights(self, model) -> None:
        self.model = model

    def prepare(self, requests) -> ModelInputs:
        """Conversations -> a bucketed, left-padded ``ModelInputs`` batch (needs ``processor``)."""
        if isinstance(requests, ModelInputs):
            return requests if self.mesh is None else shard_inputs(requests, self.mesh)
        if self.processor is None:
            raise ValueError("JaxSampler needs processor= to generate from conversations")
        from grlhf.data.batching import encode_prompts

        batch = encode_prompts(self.processor, requests, length_buckets=self.length_buckets,
                               patch_buckets=self.patch_buckets)
        inputs = self.model.prepare(**batch.model_inputs())
        return inputs if self.mesh is None else shard_inputs(inputs, self.mesh)

    def generate(self, requests, sampling: SamplingParams) -> list[list[Completion]]:
        prompt = self.prepare(requests)
        stop_ids = tuple(dict.fromkeys(self.eos_token_ids + tuple(sampling.stop_token_ids))) or (-1,)
        tokens, logprobs, lengths, stopped = decode(
            self.model, prompt, jax.random.key(sampling.seed), max_tokens=sampling.max_tokens, n=sampling.n,
            temperature=float(sampling.temperature), top_k=sampling.top_k, top_p=float(sampling.top_p),
            stop_ids=stop_ids)
        tokens, logprobs, lengths, stopped = map(to_host, (tokens, logprobs, lengths, stopped))
        out: list[list[Completion]] = []
        for row in range(tokens.shape[0]):
            count = int(lengths[row])
            ids = tokens[row, :count].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""
            completion = Completion(ids, logprobs[row, :count].tolist(), text, "stop" if stopped[row] else "length")
            if row % sampling.n == 0:
                out.append([])
            out[-1].append(completion)
        return out
