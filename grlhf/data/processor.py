"""The HF processor for Qwen2-VL / Qwen2.5-VL from a local model directory, without torchvision.

transformers' stock ``Qwen2VLProcessor`` insists on a video processor, which needs torchvision; the
subclasses here drop that sub-processor (``ProcessorMixin`` reads the attributes from ``__init__``'s
signature) and keep everything else: the tokenizer, the chat template and the PIL image processor
``Qwen2VLImageProcessorPil``. Token ids are transformers' own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

# Qwen2-VL's chat template (the hub's), used by the tiny checkpoint.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _init_image_text(self, image_processor, tokenizer, chat_template) -> None:
    self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
    self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
    self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
    self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
    ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def _with_video_processor(config: dict) -> dict:
    """vLLM loads the stock Qwen2(.5)-VL processor from a model directory, which needs a video processor
    entry in ``processor_config.json`` even for image-only use."""
    return {**config, "video_processor": {"video_processor_type": "Qwen2VLVideoProcessor"}}


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images and text only (no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_image_text(self, image_processor, tokenizer, chat_template)

    def to_dict(self) -> dict:
        return _with_video_processor(super().to_dict())


class Qwen25VLImageTextProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for images and text only (no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_image_text(self, image_processor, tokenizer, chat_template)

    def to_dict(self) -> dict:
        return _with_video_processor(super().to_dict())


PROCESSORS = {"qwen2_vl": Qwen2VLImageTextProcessor, "qwen2_5_vl": Qwen25VLImageTextProcessor}


def load_processor(model_dir: Union[str, os.PathLike]) -> ProcessorMixin:
    """Tokenizer, chat template and PIL image processor of a local HF model directory."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no config.json in {model_dir}")
    family = json.loads(config_file.read_text()).get("model_type")
    if family not in PROCESSORS:
        raise ValueError(f"unsupported model_type {family!r}; expected one of {sorted(PROCESSORS)}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir, local_files_only=True)
    chat_template = getattr(tokenizer, "chat_template", None)
    if chat_template is None:
        raise ValueError(f"{model_dir} has no chat template (chat_template.jinja or tokenizer_config.json)")
    return PROCESSORS[family](image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)

