"""One name/layout table between grlhf's NNX parameters and HF checkpoints, used in both directions
(loading, ``save_pretrained``, and the vLLM bridge).

NNX path (``model.language_model.layers.0.self_attn.q_proj.kernel``) <-> HF file key in the hub layout
that ``save_pretrained`` writes (``model.layers.0.self_attn.q_proj.weight``; ``model.visual.X`` <->
``visual.X``). transformers reads this layout and its in-memory one (``model.language_model.X``); we
accept both when loading.
"""

from __future__ import annotations

import enum
import re
from typing import Iterator, Optional

import numpy as np


class Transform(enum.Enum):
    NONE = "none"  # norms, biases, embeddings
    LINEAR = "linear"  # torch Linear weight (out, in) <-> kernel (in, out)
    CONV3D = "conv3d"  # patch embed Conv3d weight (E, C, T, P, P) <-> kernel (C*T*P*P, E)


# (NNX path regex, HF key template, transform); first match wins.
RULES: tuple[tuple[str, str, Transform], ...] = (
    (r"model\.visual\.patch_embed\.proj\.kernel", r"visual.patch_embed.proj.weight", Transform.CONV3D),
    (r"model\.visual\.(.+)\.kernel", r"visual.\1.weight", Transform.LINEAR),
    (r"model\.visual\.(.+)\.scale", r"visual.\1.weight", Transform.NONE),
    (r"model\.visual\.(.+)\.bias", r"visual.\1.bias", Transform.NONE),
    (r"model\.language_model\.embed_tokens\.embedding", r"model.embed_tokens.weight", Transform.NONE),
    (r"model\.language_model\.(.+)\.kernel", r"model.\1.weight", Transform.LINEAR),
    (r"model\.language_model\.(.+)\.scale", r"model.\1.weight", Transform.NONE),
    (r"model\.language_model\.(.+)\.bias", r"model.\1.bias", Transform.NONE),
    (r"lm_head\.kernel", r"lm_head.weight", Transform.LINEAR),
)
_COMPILED = tuple((re.compile(pattern), template, transform) for pattern, template, transform in RULES)

# transformers' in-memory names -> the hub layout (both appear in checkpoints in the wild)
_IN_MEMORY = ((re.compile(r"^model\.language_model\."), "model."), (re.compile(r"^model\.visual\."), "visual."))


def path_to_str(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def hf_key(nnx_path: str) -> tuple[str, Transform]:
    """The HF file key and layout transform of one NNX parameter path."""
    for pattern, template, transform in _COMPILED:
        match = pattern.fullmatch(nnx_path)
        if match:
            return match.expand(template), transform
    raise KeyError(f"no HF name rule for parameter {nnx_path!r}")


def canonical_hf_key(key: str) -> str:
    """Map transformers' in-memory names (``model.language_model.X``, ``model.visual.X``) to the hub layout."""
    for pattern, replacement in _IN_MEMORY:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key


def to_nnx(tensor: np.ndarray, transform: Transform) -> np.ndarray:
    """HF layout -> NNX layout."""
    if transform is Transform.LINEAR:
        return tensor.T
    if transform is Transform.CONV3D:
        return tensor.reshape(tensor.shape[0], -1).T
    return tensor


def to_hf(array: np.ndarray, transform: Transform, hf_shape: Optional[tuple[int, ...]] = None) -> np.ndarray:
    """NNX layout -> HF layout (``hf_shape`` restores the Conv3d kernel's 5-D shape)."""
    if transform is Transform.LINEAR:
        return array.T
    if transform is Transform.CONV3D:
        return array.T.reshape(hf_shape)
    return array


def hf_shape(nnx_shape: tuple[int, ...], transform: Transform, config) -> tuple[int, ...]:
    """The shape a parameter of ``nnx_shape`` has in an HF checkpoint (what messages about it should state)."""
    if transform is Transform.LINEAR:
        return tuple(nnx_shape)[::-1]
    if transform is Transform.CONV3D:
        return conv3d_shape(config)
    return tuple(nnx_shape)


def conv3d_shape(config) -> tuple[int, ...]:
    v = config.vision
    return (v.width, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)


def iter_nnx_to_hf(flat_params: Iterator[tuple[str, np.ndarray]], config) -> Iterator[tuple[str, np.ndarray]]:
    """``(hf_key, tensor)`` in HF layout for ``(nnx_path, array)`` pairs (the export and bridge direction)."""
    for path, array in flat_params:
        key, transform = hf_key(path)
        yield key, to_hf(array, transform, conv3d_shape(config) if transform is Transform.CONV3D else None)
