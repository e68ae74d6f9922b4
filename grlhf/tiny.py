"""``python -m grlhf.tiny OUT_DIR``: a complete tiny Qwen-VL model directory, built offline.

Config, random-initialised safetensors (transformers' own init, seeded), a byte-level BPE tokenizer
trained with the ``tokenizers`` library on the synthetic task's text plus Qwen's special tokens, the
Qwen2-VL chat template and the PIL image-processor config. transformers loads it with
``from_pretrained``; its head dims (32) suit vLLM's CPU attention. Deterministic for a seed. The
embedded default caches it under ``$GRLHF_CACHE`` (default ``~/.cache/grlhf``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

from grlhf.caches import cache_dir
from grlhf.errors import cli_main

QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
TINY_VERSION = 3  # bump when the recipe changes, so caches rebuild (3: processor_config names a video processor)
# 112x112 images -> an 8x8 patch grid -> 16 LLM tokens; larger images are resized down to this.
IMAGE_PROCESSOR_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """A Qwen2 tokenizer (byte-level BPE) trained on ``corpus``; the specials take the last ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(QWEN_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(state["vocab"].items(), key=lambda item: item[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    for token in QWEN_SPECIALS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS], special_tokens=True)
    from grlhf.data.processor import CHAT_TEMPLATE

    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(family: str, tokenizer, text_overrides: Optional[dict] = None,
                vision_overrides: Optional[dict] = None):
    """A ~1M-parameter config: text hidden 128, 2 layers, head dim 32; vision depth 2, head dim 32.
    The overrides change text / vision config fields (larger random models for benchmarks)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    vocab = -(-len(tokenizer) // 64) * 64  # padded to a multiple of 64, like the real checkpoints
    text = dict(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
                bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text.update(text_overrides or {})
    if family == "qwen2_vl":
        vision = {**dict(depth=2, embed_dim=64, hidden_size=128, num_heads=2, mlp_ratio=2), **(vision_overrides or {})}
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    if family == "qwen2_5_vl":
        vision = {**dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                         window_size=56, fullatt_block_indexes=[1], tokens_per_second=2), **(vision_overrides or {})}
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    raise ValueError(f"unknown family {family!r}; expected qwen2_vl or qwen2_5_vl")


def default_corpus(seed: int) -> Iterable[str]:
    from grlhf.data import synthetic
    from grlhf.reward.prompt import build_judge_prompt

    return synthetic.training_corpus(synthetic.SyntheticConfig(seed=seed), build_judge_prompt)


def write_tiny_checkpoint(out_dir: os.PathLike, family: str = "qwen2_vl", seed: int = 0,
                          corpus: Optional[Iterable[str]] = None, text_overrides: Optional[dict] = None,
                          vision_overrides: Optional[dict] = None) -> Path:
    """Write the model directory; deterministic for ``(family, seed, corpus)`` and the overrides (see
    ``tiny_config``)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    from grlhf.data.processor import PROCESSORS
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(default_corpus(seed) if corpus is None else corpus)
    config = tiny_config(family, tokenizer, text_overrides, vision_overrides)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config).eval()
    model.save_pretrained(out_dir)
    image_processor = Qwen2VLImageProcessorPil(size=IMAGE_PROCESSOR_SIZE)
    PROCESSORS[family](image_processor=image_processor, tokenizer=tokenizer,
                       chat_template=tokenizer.chat_template).save_pretrained(out_dir)
    return out_dir


def resolve_model_path(path: str, tiny_seed: int = 0) -> Path:
    """An HF model directory; ``tiny`` / ``tiny:<family>`` is the built-in tiny checkpoint (built offline)."""
    if path == "tiny" or path.startswith("tiny:"):
        return cached_tiny_checkpoint(path.partition(":")[2] or "qwen2_vl", tiny_seed)
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"model.path={path}: no HF model directory there (config.json not found)")
    return directory


def cached_tiny_checkpoint(family: str = "qwen2_vl", seed: int = 0) -> Path:
    """The tiny checkpoint for ``(family, seed)``, built once into the cache (atomically)."""
    key = hashlib.sha256(f"{TINY_VERSION}-{family}-{seed}".encode()).hexdigest()[:12]
    target = cache_dir() / f"tiny-{family}-seed{seed}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        write_tiny_checkpoint(staging, family, seed)
        try:
            staging.rename(target)
        except OSError:  # another process won the race
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write(argv: Sequence[str]) -> int:
    """The command line's work; ``main`` adds the error handling (``grlhf.errors.cli_main``)."""
    parser = argparse.ArgumentParser(prog="python -m grlhf.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", choices=["qwen2_vl", "qwen2_5_vl"], default="qwen2_vl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_checkpoint(args.out_dir, args.family, args.seed)
    print(f"wrote {path}: {', '.join(sorted(p.name for p in path.iterdir()))}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main("grlhf.tiny", write, argv)


if __name__ == "__main__":
    sys.exit(main())
