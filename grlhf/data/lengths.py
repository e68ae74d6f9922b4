"""Token lengths of prompts (without processing pixels) and the rule that skips rows too long to batch.

A prompt's length is what ``batching.encode_generation_prompts`` would give: the chat template with the
assistant turn opened, tokenised, each image's single ``<|image_pad|>`` expanded to the image's tokens.
The image token count comes from the image's size alone (``get_number_of_image_patches``, the rule vLLM
uses to count placeholders without an image), so measuring a dataset reads image headers, never pixels.

The rule (``LengthLimit``): a row is skipped, and counted with a reason, when its prompt has more than
``max_prompt`` tokens or cannot fit the largest length bucket with ``reserve`` tokens left for a sampled
response (``prompt_too_long``), or when prompt + its given response exceed ``max_total``
(``sequence_too_long``). ``batching.pick_bucket`` would raise on such a row mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

import PIL.Image

from grlhf.data.images import ImageSource
from grlhf.data.loaders import BadRow, LoadReport

PROMPT_TOO_LONG = "prompt_too_long"
SEQUENCE_TOO_LONG = "sequence_too_long"

T = TypeVar("T")


def image_size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of a PIL image, an ``ImageSource`` (its header only) or an image file path."""
    if isinstance(image, PIL.Image.Image):
        return image.size
    return ImageSource.of(image).size()


def image_tokens(image_processor, width: int, height: int) -> int:
    """The LLM tokens of one image of this size after the processor's resize and the patch merge."""
    patches = image_processor.get_number_of_image_patches(height, width)
    return patches // image_processor.merge_size ** 2


def _images(conversation: list[dict]) -> list[Any]:
    return [item["image"] for message in conversation if isinstance(message.get("content"), list)
            for item in message["content"] if isinstance(item, dict) and item.get("type") == "image"]


def prompt_lengths(processor, conversations: Sequence[list[dict]]) -> list[int]:
    """Prompt tokens of each conversation as ``encode_generation_prompts`` would encode it (no pixels read).

    Images may be PIL images, ``ImageSource``s or paths: the chat template never looks at them.
    """
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    ids = processor.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = []
    for conversation, tokens in zip(conversations, ids):
        images = _images(conversation)
        out.append(len(tokens) + sum(image_tokens(processor.image_processor, *image_size(im)) - 1 for im in images))
    return out


def response_lengths(tokenizer, responses: Sequence[str]) -> list[int]:
    """Tokens of each text response as ``encode_prompt_responses`` adds it (its tokens + the end token)."""
    if not responses:
        return []
    return [len(ids) + 1 for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class LengthLimit:
    """``max_prompt``: prompt tokens (``data.max_prompt_length``); ``max_total``: prompt + response tokens
    (the largest length bucket); ``reserve``: response tokens a sampled row needs (``rollout.max_tokens``)."""

    max_prompt: int
    max_total: int
    reserve: int = 0

    def reason(self, prompt: int, response: int = 0) -> Optional[str]:
        """None when the row fits, else why not."""
        if prompt > self.max_prompt or prompt + self.reserve > self.max_total:
            return PROMPT_TOO_LONG
        if prompt + response > self.max_total:
            return SEQUENCE_TOO_LONG
        return None

    def detail(self, prompt: int, response: int = 0) -> str:
        return (f"{prompt} prompt + {response} response tokens; limits: prompt {self.max_prompt}, "
                f"prompt + response {self.max_total} ({self.reserve} reserved for sampling)")


def skip_too_long(items: Sequence[T], limit: LengthLimit, rows: Sequence[Sequence[tuple[int, int]]],
                  report: Optional[LoadReport] = None) -> list[T]:
    """The items all of whose rows fit ``limit``. ``rows[i]``: item ``i``'s ``(prompt tokens, response
    tokens)`` rows (e.g. a pair's judge prompt in both orders). Each skipped item is counted in ``report``
    (a ``BadRow`` at its ``source_row``, with its first failing row's reason and sizes)."""
    if len(rows) != len(items):
        raise ValueError(f"{len(items)} items but {len(rows)} row lengths")
    kept = []
    for i, (item, item_rows) in enumerate(zip(items, rows)):
        failing = [(limit.reason(p, r), p, r) for p, r in item_rows if limit.reason(p, r) is not None]
        if not failing:
            kept.append(item)
        elif report is not None:
            why, prompt, response = failing[0]
            report.add_bad(BadRow(report.source, getattr(item, "source_row", i), why, limit.detail(prompt, response)))
            report.rows_used -= 1
    return kept


def fitting(processor, items: Sequence[T], limit: LengthLimit, conversations: Callable[[T], Sequence[list[dict]]],
            responses: Optional[Callable[[T], Sequence[str]]] = None,
            report: Optional[LoadReport] = None) -> list[T]:
    """The items whose every row fits ``limit``, measured with ``processor``: ``conversations(item)`` gives
    an item's prompts and ``responses(item)`` the texts trained after them (one per prompt; None: rows
    that are sampled, ``limit.reserve`` covers them). Skips are counted in ``report``."""
    per_item = [list(conversations(item)) for item in items]
    prompts = prompt_lengths(processor, [c for convs in per_item for c in convs])
    if responses is None:
        answers = [0] * len(prompts)
    else:
        texts = [list(responses(item)) for item in items]
        if any(len(t) != len(c) for t, c in zip(texts, per_item)):
            raise ValueError("responses(item) must give one text per conversation of the item")
        answers = response_lengths(processor.tokenizer, [t for ts in texts for t in ts])
    rows, at = [], 0
    for convs in per_item:
        rows.append(list(zip(prompts[at:at + len(convs)], answers[at:at + len(convs)])))
        at += len(convs)
    return skip_too_long(items, limit, rows, report)


__all__ = ["PROMPT_TOO_LONG", "SEQUENCE_TOO_LONG", "LengthLimit", "fitting", "image_size", "image_tokens",
           "prompt_lengths", "response_lengths", "skip_too_long"]
