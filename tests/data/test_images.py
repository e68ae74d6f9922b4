"""Lazily decoded images and the loaders' image checks."""

import io

import PIL.Image
import pytest

from grlhf.data.images import IMAGE_CHECKS, ImageSource, check_image_check


def test_image_check_names_its_choices():
    assert [check_image_check(how) for how in IMAGE_CHECKS] == list(IMAGE_CHECKS)
    with pytest.raises(ValueError, match=r"image_check must be one of \('decode', 'verify', 'none'\), got 'full'"):
        check_image_check("full")


def test_a_source_of_bytes_decodes_a_fresh_image_and_reads_its_size_from_the_header():
    buffer = io.BytesIO()
    PIL.Image.new("L", (3, 2), 7).save(buffer, format="PNG")
    source = ImageSource.of(buffer.getvalue())
    assert source.size() == (3, 2) and source.load().mode == "RGB" and source.load(None).mode == "L"
    assert source.load() is not source.load()
    source.check("decode")
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError
        ImageSource(data=b"not an image").check("decode")
