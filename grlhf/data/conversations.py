"""Chat conversations in the HF format, built from dataset records (images inline, as PIL images)."""

from __future__ import annotations

from typing import Any

import PIL.Image


def as_pil(image: Any) -> PIL.Image.Image:
    """A PIL image from a lazy ``ImageSource`` (decoded now) or a PIL image itself."""
    return image if isinstance(image, PIL.Image.Image) else image.load()


def prompt_conversation(question: str, image: Any, *, decode: bool = True) -> list[dict]:
    """The policy's user turn: the image, then the question. ``decode=False`` keeps a lazy image as it is
    (enough to measure the prompt, ``grlhf.data.lengths``)."""
    content = [{"type": "image", "image": as_pil(image) if decode else image}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


__all__ = ["as_pil", "prompt_conversation"]
