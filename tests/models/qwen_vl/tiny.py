"""Tiny random Qwen2-VL / Qwen2.5-VL models (transformers, PyTorch) and inputs for parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)

IMAGE, VIDEO, VSTART, VEND = 1000, 1001, 1002, 1003
PAD = 2
FAMILIES = ("qwen2_vl", "qwen2_5_vl")
PATCH_DIM = 3 * 2 * 14 * 14


def hf_config(family: str, tie: bool = False):
    text = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                bos_token_id=0, eos_token_id=1, pad_token_id=PAD)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
               tie_word_embeddings=tie)
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, window_size=56,
                  fullatt_block_indexes=[1, 3], tokens_per_second=2)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


def hf_model(family: str, *, seed: int = 0, scale: float = 3.0, tie: bool = False):
    """A random eval-mode model with eager attention; weights scaled up from HF's std-0.02 init so the
    logits are O(1-10) rather than O(0.1), which makes parity tests meaningful."""
    torch.manual_seed(seed)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    model = cls(hf_config(family, tie)).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name and "ln_q" not in name:
                param.mul_(scale)
            else:
                param.add_(0.1 * torch.randn_like(param))  # norms away from their all-ones / zeros init
    return model


def save(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def _image_tokens(grid) -> int:
    t, h, w = grid
    return t * h * w // 4


def make_inputs(case: str, seed: int = 0) -> dict:
    """Processor-shaped numpy inputs for one named case."""
    rng = np.random.default_rng(seed)
    pixels = lambda grids: rng.standard_normal((sum(int(np.prod(g)) for g in grids), PATCH_DIM)).astype(np.float32)  # noqa: E731
    vision = lambda grid, token: [VSTART] + [token] * _image_tokens(grid) + [VEND]  # noqa: E731
    if case == "text":
        ids = [[5, 6, 7, 8, 9, 10, 11, 12]]
        out = {}
    elif case in ("one_image", "window_remainder"):
        grid = [1, 8, 8] if case == "one_image" else [1, 6, 10]
        ids = [[5, 6, 7] + vision(grid, IMAGE) + [8, 9]]
        out = dict(pixel_values=pixels([grid]), image_grid_thw=np.array([grid]))
    elif case == "two_images":
        grids = [[1, 4, 4], [1, 6, 8]]
        ids = [[5, 6] + vision(grids[0], IMAGE) + [7, 8] + vision(grids[1], IMAGE) + [9]]
        out = dict(pixel_values=pixels(grids), image_grid_thw=np.array(grids))
    elif case == "left_padded":
        grids = [[1, 4, 4], [1, 8, 8]]
        first = [5, 6] + vision(grids[0], IMAGE) + [7, 8, 9]
        second = [5] + vision(grids[1], IMAGE) + [10, 11, 12, 13]
        length = max(len(first), len(second))
        ids = [[PAD] * (length - len(row)) + row for row in (first, second)]
        out = dict(pixel_values=pixels(grids), image_grid_thw=np.array(grids))
        out["attention_mask"] = np.array([[0] * (length - len(row)) + [1] * len(row) for row in (first, second)])
    elif case == "three_padded":  # three prompts, different images and lengths, left-padded
        grids = [[1, 4, 4], [1, 8, 8], [1, 6, 4]]
        rows = [[5, 6] + vision(grids[0], IMAGE) + [7, 8, 9], [5] + vision(grids[1], IMAGE) + [10, 11],
                [5, 6, 7, 8, 9, 10] + vision(grids[2], IMAGE) + [12]]
        length = max(len(row) for row in rows)
        ids = [[PAD] * (length - len(row)) + row for row in rows]
        out = dict(pixel_values=pixels(grids), image_grid_thw=np.array(grids))
        out["attention_mask"] = np.array([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    elif case == "video":
        grid = [2, 4, 6]
        ids = [[5, 6] + vision(grid, VIDEO) + [7, 8]]
        out = dict(pixel_values_videos=pixels([grid]), video_grid_thw=np.array([grid]),
                   second_per_grid_ts=np.array([1.5]))
    else:
        raise ValueError(case)
    input_ids = np.array(ids, np.int64)
    out["input_ids"] = input_ids
    out.setdefault("attention_mask", np.ones_like(input_ids))
    out["mm_token_type_ids"] = np.where(input_ids == IMAGE, 1, np.where(input_ids == VIDEO, 2, 0))
    return out


CASES = ("text", "one_image", "two_images", "left_padded", "window_remainder", "video")


def torch_inputs(inputs: dict, family: str) -> dict:
    out = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    if family == "qwen2_vl":
        out.pop("second_per_grid_ts", None)
    return out
