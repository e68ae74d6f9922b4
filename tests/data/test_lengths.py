"""Prompt lengths measured without pixels equal the encoded batch's; the too-long rule skips and counts."""

import io

import PIL.Image
import pytest

from grlhf.data.batching import encode_generation_prompts, encode_prompt_responses
from grlhf.data.conversations import prompt_conversation
from grlhf.data.images import ImageSource
from grlhf.data.lengths import (
    PROMPT_TOO_LONG,
    SEQUENCE_TOO_LONG,
    LengthLimit,
    fitting,
    prompt_lengths,
    response_lengths,
    skip_too_long,
)
from grlhf.data.loaders import LoadReport, PreferencePair
from grlhf.data.processor import load_processor


def png_source(size) -> ImageSource:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, (0, 90, 200)).save(buffer, format="PNG")
    return ImageSource(data=buffer.getvalue())


SIZES = [(130, 77), (28, 28), (300, 500), (8, 9)]  # odd sizes, a resize below min_pixels, several grids


def test_prompt_lengths_equal_the_encoded_prompts_without_decoding(tiny_dir):
    processor = load_processor(tiny_dir)
    lazy = [prompt_conversation(f"What colour is shape {i}? {{x}}", png_source(s), decode=False)
            for i, s in enumerate(SIZES)]
    lazy.append([{"role": "user", "content": [{"type": "text", "text": "text only"}]}])
    two_images = [{"role": "user", "content": [{"type": "image", "image": png_source((64, 40))},
                                               {"type": "text", "text": "and"},
                                               {"type": "image", "image": png_source((40, 64))}]}]
    lazy.append(two_images)
    decoded = [[{**m, "content": [{**c, "image": c["image"].load()} if c["type"] == "image" else c
                                  for c in m["content"]]} for m in conv] for conv in lazy]
    expected = [len(e["input_ids"][0]) for e in encode_generation_prompts(processor, decoded)]
    assert prompt_lengths(processor, lazy) == expected
    assert len(set(expected)) > 3  # the image sizes matter


def test_response_lengths_equal_the_encoded_rows(tiny_dir):
    processor = load_processor(tiny_dir)
    conversation = prompt_conversation("q", PIL.Image.new("RGB", (56, 56)))
    responses = ["red", "a much longer answer about the blue square on the left"]
    batch = encode_prompt_responses(processor, [conversation] * 2, responses, length_buckets=(512,))
    assert response_lengths(processor.tokenizer, responses) == [int(m.sum()) for m in batch.response_mask]


def test_length_limit_reasons():
    limit = LengthLimit(max_prompt=100, max_total=128, reserve=20)
    assert limit.reason(100) is None and limit.reason(108) == PROMPT_TOO_LONG  # 108 + 20 > 128
    assert limit.reason(101) == PROMPT_TOO_LONG
    assert LengthLimit(100, 128).reason(100, 28) is None
    assert LengthLimit(100, 128).reason(100, 29) == SEQUENCE_TOO_LONG


def test_skip_too_long_counts_each_skip_with_its_row_and_reason():
    pairs = [PreferencePair(str(i), PIL.Image.new("RGB", (2, 2)), "q", "c", "r", source_row=10 + i) for i in range(3)]
    report = LoadReport(source="pairs.parquet", rows_read=3, rows_used=3)
    kept = skip_too_long(pairs, LengthLimit(50, 64), [[(10, 5)], [(10, 5), (60, 0)], [(40, 30)]], report)
    assert [p.id for p in kept] == ["0"]
    assert report.rows_used == 1 and report.reason_counts == {PROMPT_TOO_LONG: 1, SEQUENCE_TOO_LONG: 1}
    assert [(b.row, b.reason) for b in report.bad_rows] == [(11, PROMPT_TOO_LONG), (12, SEQUENCE_TOO_LONG)]
    assert "60 prompt" in report.bad_rows[0].detail
    with pytest.raises(ValueError, match="3 items but 2"):
        skip_too_long(pairs, LengthLimit(50, 64), [[(1, 1)]] * 2)


def test_fitting_measures_every_row_of_an_item(tiny_dir):
    processor = load_processor(tiny_dir)
    image = png_source((56, 56))
    short, long = "What colour?", "What colour? " + "very " * 200
    items = [(short, "red"), (long, "red"), (short, "red " * 200)]
    conv = lambda item: [prompt_conversation(item[0], image, decode=False)]  # noqa: E731
    base = prompt_lengths(processor, conv(items[0]))[0]
    report = LoadReport(source="x", rows_read=3, rows_used=3)
    kept = fitting(processor, items, LengthLimit(base + 10, base + 20), conv, lambda item: [item[1]], report)
    assert kept == [items[0]] and report.reason_counts == {PROMPT_TOO_LONG: 1, SEQUENCE_TOO_LONG: 1}
