"""Chat messages with images -> padded numpy batches in a few fixed shapes.

Sequences are padded to the smallest of a few length buckets and image patches to a patch bucket, so
jit compiles a handful of programs rather than one per batch. Generation prompts are left-padded (all
rows end where decoding starts); prompt + response rows are right-padded with a response mask that is
1 on the response tokens (the sampled ids, ending with the stop token).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from grlhf.models.qwen_vl import rope
from grlhf.models.qwen_vl.sharding import shard_inputs

DEFAULT_LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)


def pick_bucket(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size``; an error naming both when none does."""
    for bucket in sorted(buckets):
        if size <= bucket:
            return bucket
    raise ValueError(f"a batch needs {size}, more than the largest bucket {max(buckets)}; add a larger bucket "
                     "or drop longer rows")


def response_window_width(longest: int, columns: int) -> int:
    """Target columns per row the train step computes logits for (trainer/step.py ``response_positions``):
    the longest response rounded up to a power of two, at least 16, at most the row's ``columns``; rounded so
    that the step compiles for a handful of widths."""
    return min(max(16, 1 << (longest - 1).bit_length()), columns)


@dataclass
class Batch:
    """Model inputs (names as the HF processor's) plus positions and, for prompt + response rows, masks."""

    input_ids: np.ndarray  # [B, L] int32
    attention_mask: np.ndarray  # [B, L] int32
    mm_token_type_ids: np.ndarray  # [B, L] int32 (0 text, 1 image, 2 video)
    position_ids: np.ndarray  # [3, B, L] int32 (M-RoPE)
    pixel_values: Optional[np.ndarray] = None  # [N, C*T*P*P] float32
    image_grid_thw: Optional[np.ndarray] = None  # [n_images, 3]
    response_mask: Optional[np.ndarray] = None  # [B, L] float32, prompt + response rows only
    patch_bucket: Optional[int] = None  # the vision tower runs on this many patches (zero rows after N)

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for ``QwenVLForConditionalGeneration.prepare`` / ``__call__``."""
        out = dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                   mm_token_type_ids=self.mm_token_type_ids, position_ids=self.position_ids)
        if self.image_grid_thw is not None:
            out.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw,
                       pad_patches_to=self.patch_bucket)
        return out


def _encode(processor, conversation: list[dict], add_generation_prompt: bool) -> dict[str, np.ndarray]:
    return processor.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=True,
                                         return_dict=True, return_tensors="np")


def pad_rows(rows: Sequence[np.ndarray], length: int, value: int, left: bool) -> np.ndarray:
    out = np.full((len(rows), length), value, dtype=np.int32)
    for i, row in enumerate(rows):
        if left:
            out[i, length - len(row):] = row
        else:
            out[i, : len(row)] = row
    return out


def _assemble(processor, encoded: list[dict], tokens: list[np.ndarray], response_starts: Optional[list[int]], *,
              left: bool, length_buckets: Sequence[int], patch_buckets: Optional[Sequence[int]]) -> Batch:
    tokenizer = processor.tokenizer
    length = pick_bucket(max(len(t) for t in tokens), length_buckets)
    input_ids = pad_rows(tokens, length, tokenizer.pad_token_id, left)
    attention_mask = pad_rows([np.ones(len(t), np.int32) for t in tokens], length, 0, left)
    image_id, video_id = processor.image_token_id, processor.video_token_id
    mm_types = np.where(input_ids == image_id, 1, np.where(input_ids == video_id, 2, 0)).astype(np.int32)
    mm_types *= attention_mask  # a pad id equal to a vision id never counts
    for i, start in enumerate(response_starts or ()):
        mm_types[i, start:] = 0  # sampled responses may hold placeholder ids: they are text there
    grids = [e["image_grid_thw"] for e in encoded if "image_grid_thw" in e]
    pixels = [e["pixel_values"] for e in encoded if "pixel_values" in e]
    grid = np.concatenate(grids).astype(np.int64) if grids else None
    merge = processor.image_processor.merge_size
    positions, _ = rope.get_rope_index(input_ids, mm_types, attention_mask, grid, spatial_merge_size=merge)
    batch = Batch(input_ids, attention_mask, mm_types, positions.astype(np.int32), image_grid_thw=grid)
    if pixels:
        batch.pixel_values = np.concatenate(pixels).astype(np.float32, copy=False)
        if patch_buckets:
            batch.patch_bucket = pick_bucket(batch.pixel_values.shape[0], patch_buckets)
    if response_starts is not None:
        mask = np.zeros((len(tokens), length), np.float32)
        for i, (row, start) in enumerate(zip(tokens, response_starts)):
            mask[i, start: len(row)] = 1.0
        batch.response_mask = mask
    return batch


def _leaf_ids(images) -> tuple:
    """The ids of the image objects in a (nested) list, in order."""
    if isinstance(images, (list, tuple)):
        return tuple(_leaf_ids(x) for x in images)
    return (id(images),)


class RepeatedImages:
    """An image processor that processes each image object once and answers a repeat call on the same
    objects (and arguments) from memory, for the lifetime of this wrapper.

    A group's judge prompts all carry one image object; processing it again for each prompt was about
    a third of the judge's host time (bench/judge_prefix.py). The outputs are the inner processor's, their
    arrays shared between repeats (read, never written, downstream). Keyed by object identity, so the
    images are kept referenced: an id cannot be reused while the wrapper lives.
    """

    def __init__(self, image_processor):
        self.inner = image_processor
        self.memo: dict = {}

    def __call__(self, images, *args, **kwargs):
        key = (_leaf_ids(images), args, repr(sorted(kwargs.items())))
        if key not in self.memo:
            self.memo[key] = (images, self.inner(images, *args, **kwargs))
        out = self.memo[key][1]
        return type(out)(dict(out))  # a fresh mapping: a caller that pops a key leaves the memo whole

    def __getattr__(self, name: str):
        if name == "inner":  # not yet set (a copy or unpickling): no endless lookup
            raise AttributeError(name)
        return getattr(self.inner, name)


def encode_generation_prompts(processor, conversations: Sequence[list[dict]]) -> list[dict[str, np.ndarray]]:
    """Each conversation through the chat template with the assistant turn opened (the processor's
    outputs, one dict per conversation, unpadded). An image object shared by several conversations is
    processed once (``RepeatedImages``, on a shallow copy of ``processor``)."""
    if len(conversations) > 1 and getattr(processor, "image_processor", None) is not None:
        processor = copy.copy(processor)
        processor.image_processor = RepeatedImages(processor.image_processor)
    return [_encode(processor, c, add_generation_prompt=True) for c in conversations]


def prompt_batch(processor, encoded: Sequence[dict[str, np.ndarray]], *,
                 length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
                 patch_buckets: Optional[Sequence[int]] = None) -> Batch:
    """Left-padded generation prompts from ``encode_generation_prompts``' outputs."""
    tokens = [e["input_ids"][0] for e in encoded]
    return _assemble(processor, list(encoded), tokens, None, left=True, length_buckets=length_buckets,
                     patch_buckets=patch_buckets)


def encode_prompts(processor, conversations: Sequence[list[dict]], *,
                   length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
                   patch_buckets: Optional[Sequence[int]] = None) -> Batch:
    """Left-padded generation prompts (the chat template with the assistant turn opened)."""
    return prompt_batch(processor, encode_generation_prompts(processor, conversations),
                        length_buckets=length_buckets, patch_buckets=patch_buckets)


def encode_prompt_responses(processor, conversations: Sequence[list[dict]], responses: Sequence[Any], *,
                            length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
                            patch_buckets: Optional[Sequence[int]] = None) -> Batch:
    """Right-padded prompt + response rows with a response mask.

    A response is either token ids (as sampled, used verbatim) or text, tokenised on its own and closed
    with the end-of-turn token, the way the policy would have produced it.
    """
    if len(conversations) != len(responses):
        raise ValueError(f"{len(conversations)} conversations but {len(responses)} responses")
    tokenizer = processor.tokenizer
    encoded = encode_generation_prompts(processor, conversations)
    tokens, starts = [], []
    for e, response in zip(encoded, responses):
        if isinstance(response, str):
            response = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        response = np.asarray(response, np.int32)
        if response.size == 0:
            raise ValueError("an empty response has no tokens to train on")
        starts.append(len(e["input_ids"][0]))
        tokens.append(np.concatenate([e["input_ids"][0], response]))
    return _assemble(processor, encoded, tokens, starts, left=False, length_buckets=length_buckets,
                     patch_buckets=patch_buckets)


def encode_micro_batches(processor, conversations: Sequence[list[dict]], responses: Sequence[Any],
                         micro_batch_size: int, *, length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
                         patch_buckets: Optional[Sequence[int]] = None) -> list[Batch]:
    """``encode_prompt_responses`` in host batches of at most ``micro_batch_size`` rows, in order."""
    return [encode_prompt_responses(processor, conversations[i:i + micro_batch_size],
                                    responses[i:i + micro_batch_size], length_buckets=length_buckets,
                                    patch_buckets=patch_buckets)
            for i in range(0, len(conversations), micro_batch_size)]


def device_inputs(model, host: Batch, mesh=None):
    """A host batch as the model's ``ModelInputs``, split over the mesh's batch axes (when there is one)."""
    inputs = model.prepare(**host.model_inputs())
    return inputs if mesh is None else shard_inputs(inputs, mesh)
