"""The score-only reward model against transformers' hidden states (float32) and its directory format."""

import numpy as np
import pytest
import torch
from flax import nnx

from grlhf.models.qwen_vl.reward_model import (SCORE_FILE, QwenVLRewardModel, has_reward_head, last_token_index,
                                               load_reward_model, reward_scores, save_reward_model)
from tests.models.qwen_vl import tiny

SCORE_ATOL = 1e-4  # a dot product of 64 float32 hidden values of O(10) with a head of O(1)


def _right_padded(inputs: dict) -> dict:
    """The left-padded case with its padding moved to the right (the trainer's layout)."""
    out = dict(inputs)
    mask = inputs["attention_mask"]
    order = np.argsort(1 - mask, axis=1, kind="stable")  # attended positions first, in order
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        out[key] = np.take_along_axis(inputs[key], order, axis=1)
    return out


def _torch_scores(hf, inputs: dict, family: str, head: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        hidden = hf.model(**tiny.torch_inputs(inputs, family)).last_hidden_state.numpy()
    mask = inputs["attention_mask"]
    last = [int(np.flatnonzero(row)[-1]) for row in mask]
    return np.stack([hidden[b, i] for b, i in enumerate(last)]) @ head.T[:, 0]


def test_last_token_index_for_both_paddings():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert list(np.asarray(last_token_index(mask))) == [4, 2, 4]


@pytest.mark.parametrize("padding", ["left", "right"])
def test_scores_match_transformers_hidden_states(pair, padding):
    family, hf, backbone = pair
    inputs = tiny.make_inputs("left_padded")
    if padding == "right":
        inputs = _right_padded(inputs)
    model = QwenVLRewardModel(backbone, rngs=nnx.Rngs(0), init_std=1.0)
    head = np.asarray(model.score.kernel[...]).T
    ours = np.asarray(reward_scores(model, model.prepare(**inputs)))
    theirs = _torch_scores(hf, inputs, family, head)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, atol=SCORE_ATOL, rtol=0)


def test_save_and_load_round_trip(pair, tmp_path):
    family, hf, backbone = pair
    model = QwenVLRewardModel(backbone, rngs=nnx.Rngs(3), init_std=1.0)
    path = save_reward_model(model, tmp_path / "rm")
    assert has_reward_head(path) and (path / "config.json").is_file()
    loaded = load_reward_model(path)
    inputs = tiny.make_inputs("two_images")
    np.testing.assert_array_equal(np.asarray(reward_scores(loaded, loaded.prepare(**inputs))),
                                  np.asarray(reward_scores(model, model.prepare(**inputs))))
    fresh = load_reward_model(tmp_path / "rm", head=np.zeros((1, 64), np.float32))  # an explicit head wins
    assert float(np.abs(np.asarray(reward_scores(fresh, fresh.prepare(**inputs)))).max()) == 0.0


def test_wrong_head_shape_is_an_error(pair, tmp_path):
    from safetensors.numpy import save_file

    family, hf, backbone = pair
    path = save_reward_model(QwenVLRewardModel(backbone, rngs=nnx.Rngs(0)), tmp_path / "rm")
    save_file({"score.weight": np.zeros((1, 7), np.float32)}, str(path / SCORE_FILE))
    with pytest.raises(ValueError, match=r"reward head of shape \(1, 7\), expected \(1, 64\)"):
        load_reward_model(path)
