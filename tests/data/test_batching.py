"""Padded batches in bucketed shapes: left-padded prompts, prompt + response masks, patch buckets."""

import numpy as np
import pytest
from PIL import Image

from grlhf.data.batching import encode_generation_prompts, encode_prompt_responses, encode_prompts, pick_bucket
from grlhf.data.processor import load_processor
from grlhf.models.qwen_vl import from_pretrained, prepare_inputs


def _conversation(seed, size, text):
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    content = [{"type": "image", "image": Image.fromarray(pixels)}, {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


CONVERSATIONS = [_conversation(0, (112, 112), "What colour is the circle?"),
                 _conversation(1, (56, 84), "How many shapes are there in the image?")]


def test_pick_bucket():
    assert pick_bucket(65, (64, 128, 256)) == 128 and pick_bucket(64, (256, 64)) == 64
    with pytest.raises(ValueError, match="more than the largest bucket 256"):
        pick_bucket(300, (64, 256))


def test_prompts_are_left_padded_to_a_bucket(tiny_dir):
    processor = load_processor(tiny_dir)
    batch = encode_prompts(processor, CONVERSATIONS, length_buckets=(64, 128))
    assert batch.input_ids.shape == (2, 128) and batch.position_ids.shape == (3, 2, 128)
    lengths = batch.attention_mask.sum(-1)
    assert (batch.attention_mask[:, -1] == 1).all()  # every row ends where decoding starts
    for row, length in zip(range(2), lengths):
        single = processor.apply_chat_template(CONVERSATIONS[row], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="np")
        np.testing.assert_array_equal(batch.input_ids[row, 128 - length:], single["input_ids"][0])
    assert (batch.input_ids[batch.attention_mask == 0] == processor.tokenizer.pad_token_id).all()
    assert batch.mm_token_type_ids.sum() == (batch.input_ids == processor.image_token_id).sum()


def test_logits_of_the_padded_batch_equal_single_rows(tiny_dir):
    processor = load_processor(tiny_dir)
    model = from_pretrained(tiny_dir)
    batch = encode_prompts(processor, CONVERSATIONS, length_buckets=(128,), patch_buckets=(128,))
    assert batch.patch_bucket == 128 and batch.pixel_values.shape[0] == 64 + 24
    prepared = prepare_inputs(model.config, **batch.model_inputs())
    assert prepared.vision.pixel_values.shape[0] == 128
    logits = np.asarray(model(**batch.model_inputs()))
    for row in range(2):
        single = processor.apply_chat_template(CONVERSATIONS[row], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="np")
        expected = np.asarray(model(**single))[0]
        valid = batch.attention_mask[row].astype(bool)
        np.testing.assert_allclose(logits[row][valid], expected, atol=1e-5)


def test_prompt_response_rows(tiny_dir):
    processor = load_processor(tiny_dir)
    tokenizer = processor.tokenizer
    responses = ["red", [5, 6, 7, tokenizer.eos_token_id]]
    batch = encode_prompt_responses(processor, CONVERSATIONS, responses, length_buckets=(64, 128))
    assert (batch.attention_mask[:, 0] == 1).all()  # right padding
    red = tokenizer("red", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for row, expected in enumerate([red, [5, 6, 7, tokenizer.eos_token_id]]):
        np.testing.assert_array_equal(batch.input_ids[row][batch.response_mask[row] == 1], expected)
        last = batch.attention_mask[row].sum()
        assert batch.response_mask[row, last - len(expected): last].all() and batch.response_mask[row, last:].sum() == 0
    with pytest.raises(ValueError, match="2 conversations but 1 responses"):
        encode_prompt_responses(processor, CONVERSATIONS, ["red"])
    with pytest.raises(ValueError, match="empty response"):
        encode_prompt_responses(processor, CONVERSATIONS[:1], [[]])


def test_placeholder_ids_inside_a_response_are_text(tiny_dir):
    """A sampled response may contain <|image_pad|>: it is a text token there, not an image slot."""
    processor = load_processor(tiny_dir)
    image_id = processor.image_token_id
    clean = encode_prompt_responses(processor, CONVERSATIONS[:1], [[5, 6, 7]])
    odd = encode_prompt_responses(processor, CONVERSATIONS[:1], [[5, image_id, 7]])
    start = int(np.flatnonzero(odd.response_mask[0])[0])
    assert odd.input_ids[0, start + 1] == image_id and odd.mm_token_type_ids[0, start + 1] == 0
    np.testing.assert_array_equal(odd.position_ids, clean.position_ids)
    model = from_pretrained(tiny_dir)
    logits_clean = np.asarray(model(**clean.model_inputs()))
    logits_odd = np.asarray(model(**odd.model_inputs()))
    np.testing.assert_allclose(logits_odd[0, :start + 1], logits_clean[0, :start + 1], atol=1e-5)


def test_a_repeated_image_is_processed_once_with_the_same_outputs(tiny_dir):
    processor = load_processor(tiny_dir)
    image_processor = processor.image_processor
    images = [c[0]["content"][0]["image"] for c in CONVERSATIONS]
    # each image asked about three times (a judge group), the same PIL object each time, interleaved
    conversations = [[{"role": "user", "content": [{"type": "image", "image": images[i % 2]},
                                                   {"type": "text", "text": f"Question {i}?"}]}] for i in range(6)]
    calls = []
    original_call = type(image_processor).__call__

    def counting(self, images, *args, **kwargs):
        calls.append(images)
        return original_call(self, images, *args, **kwargs)

    type(image_processor).__call__ = counting
    try:
        encoded = encode_generation_prompts(processor, conversations)
        assert len(calls) == 2  # one per distinct image, not one per conversation
        calls.clear()
        expected = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                  return_tensors="np") for c in conversations]
        assert len(calls) == 6  # the caller's processor is left as it was
    finally:
        type(image_processor).__call__ = original_call
    assert processor.image_processor is image_processor
    for got, want in zip(encoded, expected):
        assert sorted(got.keys()) == sorted(want.keys())
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert encoded[0]["pixel_values"] is encoded[2]["pixel_values"]  # shared, as the shared-prefix key expects
    assert encoded[0]["pixel_values"] is not encoded[1]["pixel_values"]
