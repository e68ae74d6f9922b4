"""Prompts that share a prefix: the judge prompts of one group (the image and the question, then two
different answers) are prefilled once per prefix, not once per prompt.

Host side (numpy). Requests are grouped by their image; a group is cut at the longest common token prefix
of its prompts, which must hold every image token (the suffixes are text only) and leave each prompt at
least one suffix token. The prefix batch has one row per group (left-padded to a length bucket, with the
group's image once); the suffix batch one row per request (left-padded, so every prompt ends where
decoding starts). Positions of both are sliced from each whole prompt's M-RoPE positions: the model sees
exactly the positions of the unshared prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from grlhf.data.batching import Batch, pad_rows, pick_bucket, prompt_batch


@dataclass
class SharedPrefixBatch:
    prefix: Batch  # one row per group
    suffix_ids: np.ndarray  # [B, Ls] int32, left-padded
    suffix_mask: np.ndarray  # [B, Ls] int32
    suffix_positions: np.ndarray  # [3, B, Ls] int32
    row_group: np.ndarray  # [B] int32: the prefix row of each request


def common_prefix_length(rows: Sequence[np.ndarray]) -> int:
    """How many leading tokens all ``rows`` have in common."""
    shortest = min(len(r) for r in rows)
    stacked = np.stack([np.asarray(r[:shortest]) for r in rows])
    differs = np.any(stacked != stacked[:1], axis=0)
    return int(np.argmax(differs)) if differs.any() else shortest


def _image_key(encoded: dict) -> bytes:
    """The identity of a request's images: their grids and pixels (empty for a text-only request)."""
    if "pixel_values" not in encoded:
        return b""
    digest = hashlib.blake2b(np.ascontiguousarray(encoded["image_grid_thw"], np.int64).tobytes())
    digest.update(np.ascontiguousarray(encoded["pixel_values"], np.float32).tobytes())
    return digest.digest()


def image_keys(encoded: Sequence[dict]) -> list[bytes]:
    """``_image_key`` of each of ``encode_generation_prompts``' outputs, hashed once per pixel array (repeats
    of an image share theirs: ``RepeatedImages``)."""
    by_array: dict[int, bytes] = {}
    for e in encoded:
        if "pixel_values" in e and id(e["pixel_values"]) not in by_array:
            by_array[id(e["pixel_values"])] = _image_key(e)
    return [by_array[id(e["pixel_values"])] if "pixel_values" in e else b"" for e in encoded]


def group_prefixes(tokens: Sequence[np.ndarray], vision_ends: Sequence[int], image_keys: Sequence[bytes]
                   ) -> list[tuple[list[int], int]]:
    """``[(requests, prefix length)]``: requests with the same images cut at their common prefix, when it is
    not empty and holds every image token of theirs; otherwise (and for a lone request) each request on its
    own, cut before its last token."""
    by_image: dict[bytes, list[int]] = {}
    for index, key in enumerate(image_keys):
        by_image.setdefault(key, []).append(index)
    groups = []
    for members in by_image.values():
        rows = [tokens[i] for i in members]
        length = min(common_prefix_length(rows), min(len(r) for r in rows) - 1)
        if len(members) > 1 and length > 0 and length >= max(vision_ends[i] for i in members):
            groups.append((members, length))
        else:
            groups.extend(([i], len(tokens[i]) - 1) for i in members)
    return groups


def group_bucket(groups: int) -> int:
    """The prefix batch's row count: the next power of two, so the number of groups compiles few shapes."""
    return 1 << max(groups - 1, 0).bit_length()


def cheaper_to_share(groups: Sequence[tuple[list[int], int]], lengths: Sequence[int],
                     length_buckets: Sequence[int]) -> bool:
    """Whether the prefix and suffix batches hold fewer padded token slots than the plain batch. They can
    hold more for a batch of mostly lone requests: each is its own prefix row (the rows padded up to a
    power of two), and every suffix row is padded to the longest suffix of any group. Only the prefill is
    counted: the shared layout's cache (prefix bucket + suffix bucket + max_tokens slots) can be up to twice
    as wide as the plain one's, which the decode loop's attention reads at every step."""
    cut = {i: length for members, length in groups for i in members}
    prefix = group_bucket(len(groups)) * pick_bucket(max(cut.values()), length_buckets)
    suffix = len(lengths) * pick_bucket(max(n - cut[i] for i, n in enumerate(lengths)), length_buckets)
    return prefix + suffix < len(lengths) * pick_bucket(max(lengths), length_buckets)


def _left_pad_positions(columns: Sequence[np.ndarray], length: int) -> np.ndarray:
    """``[3, n]`` position columns per row -> ``[3, B, length]``, left-padded with 0."""
    out = np.zeros((3, len(columns), length), np.int32)
    for row, cols in enumerate(columns):
        out[:, row, length - cols.shape[1]:] = cols
    return out


def shared_prefix_batch(processor, encoded: Sequence[dict], *, length_buckets: Sequence[int],
                        patch_buckets: Optional[Sequence[int]] = None) -> Optional[SharedPrefixBatch]:
    """The prefix and suffix batches of ``encode_generation_prompts``' outputs, or None when no two requests
    share a prefix, a prompt ends on an image token, or sharing would pad more token slots than the plain
    batch (``cheaper_to_share``): the plain batch is then as cheap or cheaper."""
    keys = image_keys(encoded)
    if len(set(keys)) == len(keys):  # every request has its own images (policy rollouts)
        return None
    # every request's tokens, types and positions, left-padded (its pixels are not needed: grids suffice)
    without_pixels = [{k: v for k, v in e.items() if k != "pixel_values"} for e in encoded]
    full = prompt_batch(processor, without_pixels, length_buckets=(max(len(e["input_ids"][0]) for e in encoded),))
    width = full.input_ids.shape[1]
    tokens = [e["input_ids"][0].astype(np.int32) for e in encoded]
    starts = [width - len(t) for t in tokens]  # first valid column of each left-padded row
    vision_ends = [int(np.flatnonzero(full.mm_token_type_ids[i, s:]).max(initial=-1)) + 1 for i, s in enumerate(starts)]
    if any(end >= len(t) for end, t in zip(vision_ends, tokens)):
        return None
    groups = group_prefixes(tokens, vision_ends, keys)
    if len(groups) == len(encoded):
        return None
    if not cheaper_to_share(groups, [len(t) for t in tokens], length_buckets):
        return None
    cut = np.zeros(len(encoded), np.int64)
    row_group = np.zeros(len(encoded), np.int32)
    for g, (members, length) in enumerate(groups):
        cut[members], row_group[members] = length, g
    leaders = [members[0] for members, _ in groups]

    def columns(i: int, begin: int, end: int) -> np.ndarray:  # positions [3, end - begin] of request i
        return full.position_ids[:, i, starts[i] + begin: starts[i] + end]

    # prefix rows: the group leaders' prefixes, then empty rows up to a power of two (fewer programs)
    empty = np.zeros(0, np.int32)
    spare = group_bucket(len(groups)) - len(groups)
    prefix_tokens = [tokens[i][:cut[i]] for i in leaders] + [empty] * spare
    prefix_types = [full.mm_token_type_ids[i, starts[i]: starts[i] + cut[i]] for i in leaders] + [empty] * spare
    prefix_positions = [columns(i, 0, cut[i]) for i in leaders] + [np.zeros((3, 0), np.int32)] * spare
    prefix_len = pick_bucket(int(cut.max()), length_buckets)
    prefix = Batch(pad_rows(prefix_tokens, prefix_len, processor.tokenizer.pad_token_id, True),
                   pad_rows([np.ones(len(t), np.int32) for t in prefix_tokens], prefix_len, 0, True),
                   pad_rows(prefix_types, prefix_len, 0, True), _left_pad_positions(prefix_positions, prefix_len))
    pixels = [encoded[i]["pixel_values"] for i in leaders if "pixel_values" in encoded[i]]
    if pixels:
        prefix.pixel_values = np.concatenate(pixels).astype(np.float32)
        prefix.image_grid_thw = np.concatenate([encoded[i]["image_grid_thw"] for i in leaders
                                                if "image_grid_thw" in encoded[i]]).astype(np.int64)
        if patch_buckets:
            prefix.patch_bucket = pick_bucket(prefix.pixel_values.shape[0], patch_buckets)
    suffixes = [t[c:] for t, c in zip(tokens, cut)]
    suffix_len = pick_bucket(max(len(s) for s in suffixes), length_buckets)
    suffix_positions = _left_pad_positions([columns(i, cut[i], len(t)) for i, t in enumerate(tokens)], suffix_len)
    return SharedPrefixBatch(prefix, pad_rows(suffixes, suffix_len, processor.tokenizer.pad_token_id, True),
                             pad_rows([np.ones(len(s), np.int32) for s in suffixes], suffix_len, 0, True),
                             suffix_positions, row_group)


__all__ = ["SharedPrefixBatch", "cheaper_to_share", "common_prefix_length", "group_bucket", "group_prefixes",
           "image_keys", "shared_prefix_batch"]
