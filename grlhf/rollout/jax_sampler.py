"""The JAX sampler: batched multimodal generation with a KV cache, sharing the trainer's weights.

Each prompt is prefilled once; its cache and last logits are repeated for its ``n`` samples, which
then decode in one jitted loop with a cache sized to the prompt bucket + ``max_tokens``. M-RoPE decode
positions continue from the last prompt position + 1 on all three rows (transformers' ``generate``).
Rows stop on a stop token; tokens after the stop are padding and are not reported.

With ``max_rows``, a call decodes in chunks of whole prompts (at most ``max_rows`` rows per device at
once, so the KV cache fits); every row's random numbers are its column of one ``[max_tokens, all rows]``
draw, so the chunks give the tokens and log-probs of one call.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhf.data.batching import Batch, encode_generation_prompts, pick_bucket, prompt_batch
from grlhf.models.qwen_vl.inputs import ModelInputs
from grlhf.models.qwen_vl.sharding import BATCH, put_batch, shard_inputs, to_host
from grlhf.rollout.base import Completion, SamplingParams
from grlhf.rollout.sampling import sample_tokens
from grlhf.rollout.shared_prefix import image_keys, shared_prefix_batch

# Decode steps per loop trip. 4 once saved ~10 ms of bench/rollout.py's 64-token call; with the loop stopping
# early it saves nothing measurable there (64-70 ms either way) and costs ~1 s more compile per decode
# program (1.7-1.9 s against 2.9-3.3 s; the embedded default compiles ~10 of them).
DECODE_UNROLL = 1


SAMPLING_ARGS = ("max_tokens", "n", "temperature", "top_k", "top_p", "stop_ids", "total_rows")


def sample_loop(model, cache, last_logits: jax.Array, key_mask: jax.Array, next_position: jax.Array, start: int,
                key: jax.Array, *, max_tokens: int, temperature: float, top_k: int, top_p: float,
                stop_ids: tuple[int, ...], row_offset=0, total_rows: Optional[int] = None):
    """Sample ``max_tokens`` per row after a prefill: the cache holds the prompt in slots ``< start``,
    ``last_logits [R, V]`` are the prompt's last, ``next_position [3, R]`` is the first decode position.
    The random numbers are columns ``row_offset ..`` of a ``[max_tokens, total_rows]`` draw (default: ``R``
    columns), so a chunk of a call's rows draws what the whole call draws for them.

    Returns ``(tokens [R, max_tokens], logprobs [R, max_tokens], lengths [R], stopped [R])``.
    """
    rows = last_logits.shape[0]
    stop = jnp.asarray(stop_ids, jnp.int32)
    # every step's random numbers drawn at once: no RNG kernels inside the loop
    uniforms = jax.random.uniform(key, (max_tokens, total_rows or rows))
    if total_rows is not None and total_rows != rows:
        uniforms = jax.lax.dynamic_slice_in_dim(uniforms, row_offset, rows, axis=1)

    def step(i, state):
        cache, last_logits, tokens, logprobs, done = state
        token, logprob = sample_tokens(None, last_logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                       uniform=uniforms[i])
        token = jnp.where(done, 0, token)
        tokens = tokens.at[:, i].set(token)
        logprobs = logprobs.at[:, i].set(jnp.where(done, 0.0, logprob))
        newly_done = ~done & (i < max_tokens) & jnp.any(token[:, None] == stop[None, :], axis=-1)
        position = (next_position + i)[:, :, None]
        logits, cache = model.forward(token[:, None], key_mask, position, cache=cache, cache_index=start + i)
        return cache, logits[:, 0], tokens, logprobs, done | newly_done

    # DECODE_UNROLL steps per loop trip, and no more trips once every row has stopped: a judge's traces end
    # well before its max_tokens, a policy's short answers far before. The last trip's steps past
    # ``max_tokens`` (when it is not a multiple) stop no row and write beyond the columns kept and, clamped,
    # into the cache's last slot after the last kept step has read it; their outputs are dropped.
    steps = -(-max_tokens // DECODE_UNROLL) * DECODE_UNROLL
    uniforms = jnp.pad(uniforms, ((0, steps - max_tokens), (0, 0)))

    def trip(carry):
        i, state = carry
        for offset in range(DECODE_UNROLL):
            state = step(i + offset, state)
        return i + DECODE_UNROLL, state

    def running(carry):
        i, state = carry
        return (i < max_tokens) & ~jnp.all(state[-1])

    state = (cache, last_logits, jnp.zeros((rows, steps), jnp.int32), jnp.zeros((rows, steps), jnp.float32),
             jnp.zeros((rows,), bool))
    _, (_, _, tokens, logprobs, done) = jax.lax.while_loop(running, trip, (jnp.zeros((), jnp.int32), state))
    tokens, logprobs = tokens[:, :max_tokens], logprobs[:, :max_tokens]
    is_stop = jnp.any(tokens[..., None] == stop, axis=-1)
    first_stop = jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1) + 1, max_tokens)
    return tokens, logprobs, first_stop, done


def repeat_samples(n: int, *trees):
    """Each row repeated ``n`` times along the batch axis (the samples of one prompt are adjacent)."""
    return tuple(jax.tree.map(lambda t: jnp.repeat(t, n, axis=0), tree) for tree in trees)


@partial(nnx.jit, static_argnames=SAMPLING_ARGS)
def decode(model, prompt: ModelInputs, key: jax.Array, row_offset=0, *, max_tokens: int, n: int,
           temperature: float, top_k: int, top_p: float, stop_ids: tuple[int, ...], total_rows: Optional[int] = None):
    """Prefill, then sample ``max_tokens`` per row for ``n`` copies of each prompt (rows grouped by prompt);
    ``row_offset`` and ``total_rows``: this batch is rows ``row_offset ..`` of a call of ``total_rows``.

    Returns ``(tokens [B*n, max_tokens], logprobs [B*n, max_tokens], lengths [B*n], stopped [B*n])``.
    """
    batch, length = prompt.input_ids.shape
    key_mask = jnp.concatenate([prompt.attention_mask, jnp.ones((batch, max_tokens), prompt.attention_mask.dtype)], 1)
    cache = model.init_cache(batch, length + max_tokens)
    logits, cache = model.forward(prompt.input_ids, key_mask, prompt.position_ids, prompt.vision, prompt.token_types,
                                  cache=cache, last_only=True)
    # generate continues from the last valid prompt position + 1, per M-RoPE row (not the max, which
    # differs after a prompt-final video)
    last_index = length - 1 - jnp.argmax(prompt.attention_mask[:, ::-1].astype(bool), axis=-1)
    last_position = prompt.position_ids[:, jnp.arange(batch), last_index]  # [3, B]
    cache, key_mask, last_logits = repeat_samples(n, cache, key_mask, logits[:, -1])
    next_position = jnp.repeat(last_position + 1, n, axis=1)
    return sample_loop(model, cache, last_logits, key_mask, next_position, length, key, max_tokens=max_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, row_offset=row_offset,
                       total_rows=total_rows)


@partial(nnx.jit, static_argnames=SAMPLING_ARGS)
def decode_shared(model, prefix: ModelInputs, suffix_ids: jax.Array, suffix_mask: jax.Array,
                  suffix_positions: jax.Array, row_group: jax.Array, key: jax.Array, row_offset=0, *,
                  max_tokens: int, n: int, temperature: float, top_k: int, top_p: float, stop_ids: tuple[int, ...],
                  total_rows: Optional[int] = None):
    """``decode`` for prompts that share prefixes (``shared_prefix.SharedPrefixBatch``): each prefix is
    prefilled once (with its image), its cache copied to the requests of its group, whose text suffixes
    are prefilled after it at slot ``P``; then sampling as in ``decode``. Slots between a left-padded
    suffix and its prefix are masked, and positions come from the whole prompt, so the result is the
    unshared prompt's."""
    groups, prefix_len = prefix.input_ids.shape
    batch, suffix_len = suffix_ids.shape
    length = prefix_len + suffix_len
    cache = model.init_cache(groups, length + max_tokens)
    prefix_mask = jnp.pad(prefix.attention_mask, ((0, 0), (0, suffix_len + max_tokens)))
    _, cache = model.forward(prefix.input_ids, prefix_mask, prefix.position_ids, prefix.vision, prefix.token_types,
                             cache=cache, last_only=True)
    cache = jax.tree.map(lambda t: t[row_group], cache)
    key_mask = jnp.concatenate([prefix.attention_mask[row_group], suffix_mask.astype(prefix.attention_mask.dtype),
                                jnp.ones((batch, max_tokens), prefix.attention_mask.dtype)], 1)
    logits, cache = model.forward(suffix_ids, key_mask, suffix_positions, cache=cache, cache_index=prefix_len,
                                  last_only=True)
    cache, key_mask, last_logits = repeat_samples(n, cache, key_mask, logits[:, -1])
    next_position = jnp.repeat(suffix_positions[:, :, -1] + 1, n, axis=1)  # suffixes are left-padded
    return sample_loop(model, cache, last_logits, key_mask, next_position, length, key, max_tokens=max_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, row_offset=row_offset,
                       total_rows=total_rows)


def chunk_ranges(keys: Sequence[Optional[bytes]], size: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges of at most ``size`` requests covering ``len(keys)``; a run of
    consecutive requests with the same key (not None: the same images, which may share a prefix) stays in
    one range unless it is longer than ``size``. One range when ``size >= len(keys)``."""
    runs, i = [], 0
    while i < len(keys):
        j = i + 1
        while keys[i] is not None and j < len(keys) and keys[j] == keys[i]:
            j += 1
        runs.append((i, j))
        i = j
    out, begin, end = [], 0, 0
    for first, stop in runs:
        if stop - begin > size and end > begin:  # the run does not fit beside the chunk so far: close it
            out.append((begin, end))
            begin = end
        while stop - begin > size:  # a run longer than a chunk
            out.append((begin, begin + size))
            begin += size
        end = stop
    if end > begin:
        out.append((begin, end))
    return out


class JaxSampler:
    """``generate(requests, sampling) -> [[Completion] * n per request]`` on the trainer's model.

    Requests are chat conversations (with a ``processor``: tokenised, left-padded to a length bucket,
    images padded to a patch bucket, so a run compiles a few programs) or an already prepared
    ``ModelInputs`` batch; with ``mesh``, prompts are split over its batch axes. With ``share_prefix``,
    conversations that begin with the same image and tokens (a group's judge prompts) prefill that prefix
    once (``decode_shared``). With ``max_rows``, conversations decode in chunks of whole prompts of at
    most ``max_rows`` rows (sequences) per device (at least one prompt's ``n``), consecutive requests with
    the same images kept together, each chunk padded to the whole call's length bucket: the tokens and
    log-probs are the one call's (a ``ModelInputs`` batch is decoded at once). ``update_weights`` points
    at new parameters: the sampler holds the model object itself, so sharing the trainer's arrays costs no
    copy.
    """

    def __init__(self, model, tokenizer=None, *, processor=None, eos_token_ids: Sequence[int] = (),
                 length_buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048, 4096),
                 patch_buckets: Optional[Sequence[int]] = None, mesh=None, share_prefix: bool = True,
                 max_rows: Optional[int] = None):
        self.model, self.mesh = model, mesh
        self.processor = processor
        tokenizer = tokenizer if tokenizer is not None or processor is None else processor.tokenizer
        self.tokenizer = tokenizer
        self.length_buckets, self.patch_buckets = tuple(length_buckets), patch_buckets
        self.share_prefix = share_prefix
        self.max_rows = max_rows or None
        eos = list(eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = tuple(dict.fromkeys(eos))

    def update_weights(self, model) -> None:
        self.model = model

    def metrics(self) -> dict[str, float]:
        """Nothing to count: the sampler holds the trainer's model, so a weight update costs nothing."""
        return {}

    def _place(self, inputs: ModelInputs) -> ModelInputs:
        return inputs if self.mesh is None else shard_inputs(inputs, self.mesh)

    def _batch_inputs(self, batch: Batch) -> ModelInputs:
        return self._place(self.model.prepare(**batch.model_inputs()))

    def _encode(self, requests) -> list[dict]:
        if self.processor is None:
            raise ValueError("JaxSampler needs processor= to generate from conversations")
        return encode_generation_prompts(self.processor, requests)

    def plan(self, requests) -> tuple[Callable, tuple]:
        """The decode function for ``requests`` and its array arguments: ``decode_shared`` when some
        conversations share a prefix (and ``share_prefix``), else ``decode`` on the plain batch."""
        if isinstance(requests, ModelInputs):
            return decode, (self._place(requests),)
        return self._plan_encoded(self._encode(requests))

    def _plan_encoded(self, encoded: list[dict], width: Optional[int] = None) -> tuple[Callable, tuple]:
        """``plan`` of encoded prompts; ``width``: the plain batch's length (a chunk's: the whole call's)."""
        buckets = dict(length_buckets=self.length_buckets, patch_buckets=self.patch_buckets)
        shared = shared_prefix_batch(self.processor, encoded, **buckets) if self.share_prefix else None
        if shared is None:
            if width is not None:
                buckets["length_buckets"] = (width,)
            return decode, (self._batch_inputs(prompt_batch(self.processor, encoded, **buckets)),)
        put = (lambda x, axis: x) if self.mesh is None else (  # noqa: E731
            lambda x, axis: put_batch(x, self.mesh, axis))
        return decode_shared, (self._batch_inputs(shared.prefix), put(shared.suffix_ids, 0), put(shared.suffix_mask, 0),
                               put(shared.suffix_positions, 1), shared.row_group)

    def prompts_per_chunk(self, n: int) -> Optional[int]:
        """Prompts decoded at once (all the mesh's batch shards): ``max_rows // n`` (at least 1) per shard;
        None without ``max_rows``."""
        if self.max_rows is None:
            return None
        shards = 1 if self.mesh is None else int(np.prod([self.mesh.shape[a] for a in BATCH]))
        return max(self.max_rows // n, 1) * shards

    def chunks(self, encoded: list[dict], n: int) -> list[tuple[int, int]]:
        """The request ranges decoded one after another (one range: the whole call)."""
        size = self.prompts_per_chunk(n)
        if size is None or size >= len(encoded):
            return [(0, len(encoded))]
        keys = image_keys(encoded) if self.share_prefix else [None] * len(encoded)
        return chunk_ranges(keys, size)

    def generate(self, requests, sampling: SamplingParams) -> list[list[Completion]]:
        stop_ids = tuple(dict.fromkeys(self.eos_token_ids + tuple(sampling.stop_token_ids))) or (-1,)
        args = dict(max_tokens=sampling.max_tokens, n=sampling.n, temperature=float(sampling.temperature),
                    top_k=sampling.top_k, top_p=float(sampling.top_p), stop_ids=stop_ids)
        key = jax.random.key(sampling.seed)
        if isinstance(requests, ModelInputs):
            function, arrays = self.plan(requests)
            results = [function(self.model, *arrays, key, **args)]
        else:
            encoded = self._encode(requests)
            ranges = self.chunks(encoded, sampling.n)
            if len(ranges) == 1:
                function, arrays = self._plan_encoded(encoded)
                results = [function(self.model, *arrays, key, **args)]
            else:  # dispatched one after another: the host prepares a chunk while the device decodes the last
                width = pick_bucket(max(len(e["input_ids"][0]) for e in encoded), self.length_buckets)
                results = []
                for begin, end in ranges:
                    function, arrays = self._plan_encoded(encoded[begin:end], width)
                    results.append(function(self.model, *arrays, key, begin * sampling.n,
                                            total_rows=len(encoded) * sampling.n, **args))
        tokens, logprobs, lengths, stopped = (np.concatenate([to_host(r[i]) for r in results]) for i in range(4))
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
