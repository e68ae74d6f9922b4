"""The processor and the tiny checkpoint: loadable by transformers, token ids as transformers makes them."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer

from grlhf.data.processor import load_processor
from grlhf.tiny import QWEN_SPECIALS, main, write_tiny_checkpoint
from tests.data.conftest import CORPUS


def _image(seed=0, size=(112, 112)):
    pixels = (np.random.default_rng(seed).random(size[::-1] + (3,)) * 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _messages(image, text="What colour is the circle?"):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def test_token_ids_equal_transformers_tokenisation(tiny_dir):
    processor = load_processor(tiny_dir)
    out = processor.apply_chat_template(_messages(_image()), add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors="np")
    grid = out["image_grid_thw"][0]
    assert grid.tolist() == [1, 8, 8] and out["pixel_values"].shape == (64, 1176)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = tokenizer.apply_chat_template(_messages(None), add_generation_prompt=True, tokenize=False)
    expanded = text.replace("<|image_pad|>", "<|image_pad|>" * 16)
    assert out["input_ids"][0].tolist() == tokenizer(expanded)["input_ids"]
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>What colour is the circle?<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    assert out["mm_token_type_ids"][0].sum() == 16


def test_specials_and_vocab(tiny_dir):
    processor = load_processor(tiny_dir)
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS]
    assert ids == list(range(len(tokenizer) - len(QWEN_SPECIALS), len(tokenizer)))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = "Describe the image. a blue square and a red circle"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer(text)["input_ids"]) < len(text) / 2  # BPE merges learned from the corpus


def test_loads_in_transformers_with_finite_logits(tiny_dir):
    processor = load_processor(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    config = model.config
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == 32  # vLLM CPU head sizes
    inputs = processor.apply_chat_template(_messages(_image(1, (150, 90))), add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == config.text_config.vocab_size


def test_deterministic_for_a_seed(tmp_path):
    first = write_tiny_checkpoint(tmp_path / "a", "qwen2_vl", seed=3, corpus=CORPUS)
    second = write_tiny_checkpoint(tmp_path / "b", "qwen2_vl", seed=3, corpus=CORPUS)
    other = write_tiny_checkpoint(tmp_path / "c", "qwen2_vl", seed=4, corpus=CORPUS)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_unknown_family_and_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_processor(tmp_path)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--family", "llava"])
