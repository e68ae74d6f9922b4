"""Host-side preparation of a forward pass from the HF processor's outputs (numpy, outside jit).

Turns ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values``, ``image_grid_thw`` (and
the video equivalents) into arrays whose shapes alone decide the compiled program: M-RoPE positions,
and the vision tower's rotary angles, segments and window order. Checks that the number of image and
video tokens matches the grids, naming both counts when it does not.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from grlhf.models.qwen_vl import rope
from grlhf.models.qwen_vl.config import QwenVLConfig
from grlhf.models.qwen_vl.vision import SegmentLayout, VisionInputs


class ModelInputs(NamedTuple):
    input_ids: np.ndarray  # [B, L] int32
    attention_mask: np.ndarray  # [B, L] int32
    position_ids: np.ndarray  # [3, B, L] int32
    vision: Optional[VisionInputs]
    token_types: Optional[np.ndarray] = None  # [B, L] int32 mm_token_type_ids (with vision inputs only)


def _numpy(value: Any, dtype=None) -> Optional[np.ndarray]:
    if value is None:
        return None
    if hasattr(value, "detach"):  # torch tensors (CPU) from a processor called with return_tensors="pt"
        value = value.detach().cpu()
        value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.asarray(value, dtype=dtype)


def segment_layout(segment_ids: np.ndarray) -> SegmentLayout:
    """Pack rows with contiguous segment ids into ``[S, Lmax]`` slots (see ``SegmentLayout``)."""
    segment_ids = np.asarray(segment_ids)
    starts = np.flatnonzero(np.r_[True, segment_ids[1:] != segment_ids[:-1]])
    lengths = np.diff(np.r_[starts, segment_ids.size])
    width = int(lengths.max())
    rows = np.arange(segment_ids.size)
    segment = np.repeat(np.arange(starts.size), lengths)
    slot = rows - starts[segment]
    gather = np.zeros((starts.size, width), np.int32)
    valid = np.zeros((starts.size, width), bool)
    gather[segment, slot] = rows
    valid[segment, slot] = True
    return SegmentLayout(gather, valid, (segment * width + slot).astype(np.int32))


def _grid_tokens(grid: Optional[np.ndarray], merge: int) -> int:
    return 0 if grid is None else int(np.sum(np.prod(grid, axis=-1)) // merge**2)


def prepare_vision(config: QwenVLConfig, pixel_values: np.ndarray, grid_thw: np.ndarray,
                   pad_to: Optional[int] = None) -> VisionInputs:
    """Vision inputs for patches of the given grids (processor order), all images then all videos.

    ``pad_to`` appends zero patches up to a fixed count (a shape bucket, a multiple of the merge block):
    they form one extra attention segment and window, and their features come after every real one,
    so they are never scattered into the text.
    """
    v = config.vision
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    expected = int(np.sum(np.prod(grid_thw, axis=-1)))
    if pixel_values.shape != (expected, v.patch_dim):
        raise ValueError(f"pixel values have shape {pixel_values.shape}, but the grids {grid_thw.tolist()} "
                         f"need ({expected}, {v.patch_dim})")
    total = expected if pad_to is None else pad_to
    merge = v.spatial_merge_size**2
    if total < expected or total % merge:
        raise ValueError(f"pad_to={pad_to} must be a multiple of {merge} and at least the {expected} real patches")
    pad = total - expected
    pixel_values = np.concatenate([pixel_values, np.zeros((pad, v.patch_dim), pixel_values.dtype)])
    rotary = rope.vision_rotary(grid_thw, v.head_dim, v.spatial_merge_size, v.rope_theta)
    rotary = np.concatenate([rotary, np.zeros((pad, rotary.shape[1]), rotary.dtype)])
    segments = rope.vision_segment_ids(grid_thw)
    segments = np.concatenate([segments, np.full(pad, segments.max(initial=-1) + 1, np.int32)])
    if config.family != "qwen2_5_vl":
        return VisionInputs(pixel_values, rotary, segment_layout(segments))
    order, cu_windows = rope.window_index(grid_thw, window_size=v.window_size, patch_size=v.patch_size,
                                          spatial_merge_size=v.spatial_merge_size)
    order = np.concatenate([order, np.arange(expected // merge, total // merge)]).astype(np.int32)
    windows = rope.segments_from_cu_seqlens(cu_windows, expected)
    windows = np.concatenate([windows, np.full(pad, windows.max(initial=-1) + 1, np.int32)])
    return VisionInputs(pixel_values, rotary, segment_layout(segments), order, segment_layout(windows))


def prepare_inputs(
    config: QwenVLConfig,
    input_ids: Any,
    attention_mask: Any = None,
    mm_token_type_ids: Any = None,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    pixel_values_videos: Any = None,
    video_grid_thw: Any = None,
    second_per_grid_ts: Any = None,
    position_ids: Any = None,
    pad_patches_to: Optional[int] = None,
) -> ModelInputs:
    """Everything the jitted forward needs, from the HF processor's outputs (numpy or torch).

    ``position_ids`` (``[3, B, L]``), when the caller has them, are used instead of being recomputed;
    ``pad_patches_to`` pads the vision patches to a shape bucket (see ``prepare_vision``).
    """
    input_ids = _numpy(input_ids, np.int32)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    attention_mask = np.ones_like(input_ids) if attention_mask is None else _numpy(attention_mask, np.int32)
    image_grid_thw, video_grid_thw = _numpy(image_grid_thw, np.int64), _numpy(video_grid_thw, np.int64)
    merge = config.vision.spatial_merge_size
    types = None if mm_token_type_ids is None else _numpy(mm_token_type_ids, np.int32)
    for code, name, token_id, grid in ((1, "image", config.image_token_id, image_grid_thw),
                                       (2, "video", config.video_token_id, video_grid_thw)):
        # with mm_token_type_ids, a placeholder id that is not marked as vision (a sampled response) is text
        marked = input_ids == token_id if types is None else (types == code) & (input_ids == token_id)
        in_text, in_grids = int(np.sum(marked)), _grid_tokens(grid, merge)
        if in_text != in_grids:
            raise ValueError(f"{name} features and {name} tokens do not match: the text has {in_text} {name} "
                             f"tokens, the grids give {in_grids} features")
    if mm_token_type_ids is None:
        if image_grid_thw is not None or video_grid_thw is not None:
            raise ValueError("mm_token_type_ids is required with images or videos (the HF processor returns it)")
        mm_token_type_ids = np.zeros_like(input_ids)
    if position_ids is None:
        position_ids, _ = rope.get_rope_index(
            input_ids, _numpy(mm_token_type_ids, np.int64), attention_mask, image_grid_thw, video_grid_thw,
            _numpy(second_per_grid_ts), spatial_merge_size=merge,
            tokens_per_second=config.vision.tokens_per_second if config.family == "qwen2_5_vl" else None)
    elif np.shape(position_ids) != (3,) + input_ids.shape:
        raise ValueError(f"position_ids must be [3, batch, length] = {(3,) + input_ids.shape}, "
                         f"got {np.shape(position_ids)}")

    pixels = [p for p in (_numpy(pixel_values, np.float32), _numpy(pixel_values_videos, np.float32)) if p is not None]
    grids = [g for g in (image_grid_thw, video_grid_thw) if g is not None]
    vision = None
    if grids:
        vision = prepare_vision(config, np.concatenate(pixels), np.concatenate(grids), pad_patches_to)
    token_types = None if vision is None else np.asarray(mm_token_type_ids, np.int32)
    return ModelInputs(input_ids, attention_mask, np.asarray(position_ids, np.int32), vision, token_types)
