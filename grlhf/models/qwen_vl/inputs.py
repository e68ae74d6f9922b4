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
from grlhf.models.qwen_vl.vision import VisionInputs


class ModelInputs(NamedTuple):
    input_ids: np.ndarray  # [B, L] int32
    attention_mask: np.ndarray  # [B, L] int32
    position_ids: np.ndarray  # [3, B, L] int32
    vision: Optional[VisionInputs]


def _numpy(value: Any, dtype=None) -> Optional[np.ndarray]:
    if value is None:
        return None
    if hasattr(value, "detach"):  # torch tensors (CPU) from a processor called with return_tensors="pt"
        value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _grid_tokens(grid: Optional[np.ndarray], merge: int) -> int:
    return 0 if grid is None else int(np.sum(np.prod(grid, axis=-1)) // merge**2)


def prepare_vision(config: QwenVLConfig, pixel_values: np.ndarray, grid_thw: np.ndarray) -> VisionInputs:
    """Vision inputs for patches of the given grids (processor order), all images then all videos."""
    v = config.vision
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    expected = int(np.sum(np.prod(grid_thw, axis=-1)))
    if pixel_values.shape != (expected, v.patch_dim):
        raise ValueError(f"pixel values have shape {pixel_values.shape}, but the grids {grid_thw.tolist()} "
                         f"need ({expected}, {v.patch_dim})")
    rotary = rope.vision_rotary(grid_thw, v.head_dim, v.spatial_merge_size, v.rope_theta)
    segments = rope.vision_segment_ids(grid_thw)
    if config.family != "qwen2_5_vl":
        return VisionInputs(pixel_values, rotary, segments)
    order, cu_windows = rope.window_index(grid_thw, window_size=v.window_size, patch_size=v.patch_size,
                                          spatial_merge_size=v.spatial_merge_size)
    window_segments = rope.segments_from_cu_seqlens(cu_windows, expected)
    return VisionInputs(pixel_values, rotary, segments, np.asarray(order, np.int32), window_segments)


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
) -> ModelInputs:
    """Everything the jitted forward needs, from the HF processor's outputs (numpy or torch)."""
    input_ids = _numpy(input_ids, np.int32)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    attention_mask = np.ones_like(input_ids) if attention_mask is None else _numpy(attention_mask, np.int32)
    image_grid_thw, video_grid_thw = _numpy(image_grid_thw, np.int64), _numpy(video_grid_thw, np.int64)
    merge = config.vision.spatial_merge_size
    for name, token_id, grid in (("image", config.image_token_id, image_grid_thw),
                                 ("video", config.video_token_id, video_grid_thw)):
        in_text, in_grids = int(np.sum(input_ids == token_id)), _grid_tokens(grid, merge)
        if in_text != in_grids:
            raise ValueError(f"{name} features and {name} tokens do not match: the text has {in_text} {name} "
                             f"tokens, the grids give {in_grids} features")
    if mm_token_type_ids is None:
        if image_grid_thw is not None or video_grid_thw is not None:
            raise ValueError("mm_token_type_ids is required with images or videos (the HF processor returns it)")
        mm_token_type_ids = np.zeros_like(input_ids)
    position_ids, _ = rope.get_rope_index(
        input_ids, _numpy(mm_token_type_ids, np.int64), attention_mask, image_grid_thw, video_grid_thw,
        _numpy(second_per_grid_ts, np.float64), spatial_merge_size=merge,
        tokens_per_second=config.vision.tokens_per_second if config.family == "qwen2_5_vl" else None)

    pixels = [p for p in (_numpy(pixel_values, np.float32), _numpy(pixel_values_videos, np.float32)) if p is not None]
    grids = [g for g in (image_grid_thw, video_grid_thw) if g is not None]
    vision = None
    if grids:
        vision = prepare_vision(config, np.concatenate(pixels), np.concatenate(grids))
    return ModelInputs(input_ids, attention_mask, np.asarray(position_ids, np.int32), vision)
