"""Model configuration for Qwen2-VL and Qwen2.5-VL, read from an HF model directory or config object.

transformers' ``AutoConfig`` reads both the nested 5.x ``config.json`` and the flat hub layout
(``rope_scaling`` with ``mrope``); this module turns either into one small frozen dataclass tree and
rejects what the port does not implement, by name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

FAMILIES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Union[int, tuple[int, ...]]] = None
    pad_token_id: Optional[int] = None
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    width: int  # Qwen2-VL embed_dim, Qwen2.5-VL hidden_size
    num_heads: int
    intermediate_size: int  # Qwen2-VL embed_dim * mlp_ratio
    out_size: int  # the merger's output = the LM hidden size
    hidden_act: str
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    rope_theta: float = 10000.0
    window_size: Optional[int] = None  # Qwen2.5-VL only (pixels)
    fullatt_block_indexes: tuple[int, ...] = ()
    tokens_per_second: Optional[float] = None  # Qwen2.5-VL only

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class QwenVLConfig:
    family: str  # "qwen2_vl" or "qwen2_5_vl"
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    tie_word_embeddings: bool = False
    hf: Any = field(default=None, compare=False, repr=False)  # the transformers config it came from

    @property
    def architecture(self) -> str:
        return FAMILIES[self.family]

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]) -> "QwenVLConfig":
        """Read ``config.json`` from a local HF model directory (either layout)."""
        from transformers import AutoConfig

        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"no config.json in {path}")
        with open(config_file) as handle:
            _check_family(json.load(handle).get("model_type"))
        return cls.from_hf(AutoConfig.from_pretrained(path, local_files_only=True))

    @classmethod
    def from_hf(cls, hf: Any) -> "QwenVLConfig":
        """Build from a transformers ``Qwen2VLConfig`` / ``Qwen2_5_VLConfig`` object."""
        family = _check_family(getattr(hf, "model_type", None))
        return cls(
            family=family,
            text=_text_config(hf.text_config),
            vision=_vision_config(hf.vision_config, family),
            image_token_id=hf.image_token_id,
            video_token_id=hf.video_token_id,
            vision_start_token_id=hf.vision_start_token_id,
            vision_end_token_id=hf.vision_end_token_id,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            hf=hf,
        )


def _check_family(model_type: Optional[str]) -> str:
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; grlhf supports {sorted(FAMILIES)}")
    return model_type


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _text_config(t: Any) -> TextConfig:
    if getattr(t, "use_sliding_window", False):
        raise ValueError("use_sliding_window=True is not supported (no released Qwen-VL checkpoint uses it)")
    rope = dict(getattr(t, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"unsupported rope_type {rope_type!r}; grlhf implements the default M-RoPE")
    if getattr(t, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported text hidden_act {t.hidden_act!r}; Qwen2 decoders use 'silu'")
    if t.hidden_size % t.num_attention_heads or t.num_attention_heads % t.num_key_value_heads:
        raise ValueError("hidden_size must divide into heads, and heads into key/value heads")
    section = tuple(rope.get("mrope_section") or (16, 24, 24))
    head_dim = t.hidden_size // t.num_attention_heads
    if len(section) != 3 or 2 * sum(section) != head_dim:
        raise ValueError(f"mrope_section {list(section)} must have 3 entries summing to head_dim/2 = {head_dim // 2}")
    return TextConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        rms_norm_eps=t.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", getattr(t, "rope_theta", 1e6))),
        mrope_section=section,
        bos_token_id=getattr(t, "bos_token_id", None),
        eos_token_id=_hashable(getattr(t, "eos_token_id", None)),
        pad_token_id=getattr(t, "pad_token_id", None),
        max_position_embeddings=getattr(t, "max_position_embeddings", 32768),
    )


def _vision_config(v: Any, family: str) -> VisionConfig:
    rope = dict(getattr(v, "rope_parameters", None) or {})
    common = dict(
        depth=v.depth,
        num_heads=v.num_heads,
        hidden_act=v.hidden_act,
        in_channels=getattr(v, "in_channels", getattr(v, "in_chans", 3)),
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        spatial_merge_size=v.spatial_merge_size,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
    )
    if family == "qwen2_vl":
        if v.hidden_act != "quick_gelu":
            raise ValueError(f"unsupported Qwen2-VL vision hidden_act {v.hidden_act!r}; expected 'quick_gelu'")
        config = VisionConfig(width=v.embed_dim, intermediate_size=int(v.embed_dim * v.mlp_ratio),
                              out_size=v.hidden_size, **common)
    else:
        if v.hidden_act != "silu":
            raise ValueError(f"unsupported Qwen2.5-VL vision hidden_act {v.hidden_act!r}; expected 'silu'")
        config = VisionConfig(width=v.hidden_size, intermediate_size=v.intermediate_size, out_size=v.out_hidden_size,
                              window_size=v.window_size, fullatt_block_indexes=tuple(v.fullatt_block_indexes),
                              tokens_per_second=v.tokens_per_second, **common)
    if config.width % config.num_heads or config.head_dim % 4:
        raise ValueError(f"vision head_dim {config.width}/{config.num_heads} must be an integer divisible by 4")
    return config
