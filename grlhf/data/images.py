"""Lazily decoded images: what a loaded record holds instead of pixels (``grlhf.data.loaders``).

An :class:`ImageSource` keeps the encoded bytes, a file path, or an in-memory PIL image; ``load()`` decodes a
fresh PIL image each time, ``size()`` reads the header only, and ``check()`` is how a loader finds a corrupt image
at load time (``IMAGE_CHECKS``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Optional, Union

import PIL.Image

IMAGE_CHECKS = ("decode", "verify", "none")


def check_image_check(how: str) -> str:
    """``how`` if it is one of ``IMAGE_CHECKS``; a ValueError naming them otherwise."""
    if how not in IMAGE_CHECKS:
        raise ValueError(f"image_check must be one of {IMAGE_CHECKS}, got {how!r}")
    return how


@dataclass(frozen=True, eq=False)
class ImageSource:
    """A lazily decoded image: encoded bytes, a file path, or (for in-memory data) a PIL image."""

    data: Optional[bytes] = None
    path: Optional[str] = None
    pil: Optional[PIL.Image.Image] = None

    def __post_init__(self):
        if sum(x is not None for x in (self.data, self.path, self.pil)) != 1:
            raise ValueError("ImageSource needs exactly one of data, path, pil")

    @classmethod
    def of(cls, value: Union["ImageSource", PIL.Image.Image, bytes, str, os.PathLike]) -> "ImageSource":
        if isinstance(value, ImageSource):
            return value
        if isinstance(value, PIL.Image.Image):
            return cls(pil=value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(data=bytes(value))
        if isinstance(value, (str, os.PathLike)):
            return cls(path=os.fspath(value))
        raise TypeError(f"cannot make an image from {type(value).__name__}")

    def load(self, mode: Optional[str] = "RGB") -> PIL.Image.Image:
        """Decode a fresh PIL image (converted to ``mode``; ``None`` keeps the file's mode)."""
        if self.pil is not None:
            im = self.pil.copy()
        else:
            with PIL.Image.open(io.BytesIO(self.data) if self.data is not None else self.path) as f:
                f.load()
                im = f.copy()
        return im.convert(mode) if mode is not None and im.mode != mode else im

    def size(self) -> tuple[int, int]:
        """``(width, height)`` from the file's header, without decoding the pixels."""
        if self.pil is not None:
            return self.pil.size
        with PIL.Image.open(io.BytesIO(self.data) if self.data is not None else self.path) as f:
            return f.size

    def check(self, how: str = "decode") -> None:
        """Raise if the image cannot be read: ``decode`` decodes all pixels, ``verify`` checks the file."""
        if how == "none" or self.pil is not None:
            return
        with PIL.Image.open(io.BytesIO(self.data) if self.data is not None else self.path) as f:
            f.verify() if how == "verify" else f.load()

    def __repr__(self) -> str:
        if self.data is not None:
            return f"ImageSource(<{len(self.data)} bytes>)"
        if self.path is not None:
            return f"ImageSource(path={self.path!r})"
        return f"ImageSource(pil={self.pil.mode} {self.pil.size})"


__all__ = ["IMAGE_CHECKS", "ImageSource", "check_image_check"]
