"""Device micro-batches: response windows (``model.loss_logits=responses``) or whole rows (``rows``), and the
old / reference log-probs the RL batches carry either way."""

import numpy as np
import PIL.Image
import pytest

from grlhf.data.batching import encode_micro_batches
from grlhf.data.conversations import prompt_conversation
from grlhf.data.processor import load_processor
from grlhf.models.qwen_vl import from_pretrained
from grlhf.tiny import resolve_model_path
from grlhf.trainer.batches import rl_batches, supervised_batches


@pytest.fixture(scope="module")
def rows():
    directory = resolve_model_path("tiny", 0)
    model, processor = from_pretrained(directory), load_processor(directory)
    image = PIL.Image.new("RGB", (56, 56), (200, 30, 30))
    conversations = [prompt_conversation(q, image) for q in ("What colour is the square?", "Which shape?")]
    responses = [processor.tokenizer.encode(text) for text in ("red", "a small blue circle, I think")]
    return model, encode_micro_batches(processor, conversations, responses, 2)


def test_windows_or_whole_rows(rows):
    model, host = rows
    windowed, = supervised_batches(model, host)
    whole, = supervised_batches(model, host, windows=False)
    assert whole.positions is None and windowed.positions.shape[0] == 2
    mask = np.asarray(windowed.loss_mask)
    picked = np.take_along_axis(mask, np.asarray(windowed.positions), axis=1)
    assert picked.sum() == mask.sum() > 0  # every response token inside its row's window


def test_old_logprobs_agree_with_and_without_windows(rows):
    model, host = rows
    sampled = [[0.0] * int(m[1:].sum()) for m in host[0].response_mask]
    kwargs = dict(temperature=0.7, reference=model, sampler_logprobs=sampled)
    (windowed,), _ = rl_batches(model, host, **kwargs, head_chunk=100)
    (whole,), _ = rl_batches(model, host, **kwargs, windows=False)
    for a, b in ((windowed.old_logprobs, whole.old_logprobs), (windowed.ref_logprobs, whole.ref_logprobs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
