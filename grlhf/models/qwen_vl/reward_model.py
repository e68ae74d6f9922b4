"""The score-only reward model: a Qwen-VL backbone with a scalar head on the last token.

The paper's baseline reward (trained with the Bradley-Terry loss, ``trainer.stage=rm``). The score is
``w . h_last`` where ``h_last`` is the final-norm hidden state of each row's last attended token, as
transformers' ``*ForSequenceClassification`` heads read it (``score.weight`` of shape ``[1, H]``, no bias).
On disk: the backbone as an ordinary HF directory (loadable by transformers and vLLM as the generator it
came from) plus ``score.safetensors`` holding ``score.weight``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhf.models.qwen_vl.checkpoint import WeightsMismatch
from grlhf.models.qwen_vl.inputs import ModelInputs
from grlhf.models.qwen_vl.model import QwenVLForConditionalGeneration

SCORE_FILE = "score.safetensors"
SCORE_KEY = "score.weight"


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """``[B]`` index of each row's last attended position (right or left padding)."""
    mask = jnp.asarray(attention_mask)
    return mask.shape[1] - 1 - jnp.argmax(jnp.flip(mask, axis=1) > 0, axis=1)


class QwenVLRewardModel(nnx.Module):
    """``backbone`` (the generator's weights; its LM head is unused) and ``score``, a ``H -> 1`` projection."""

    def __init__(self, backbone: QwenVLForConditionalGeneration, *, rngs: nnx.Rngs, init_std: float = 0.02):
        hidden = backbone.config.text.hidden_size
        self.backbone = backbone
        self.score = nnx.Linear(hidden, 1, use_bias=False, rngs=rngs, param_dtype=jnp.float32,
                                kernel_init=nnx.initializers.normal(init_std))

    def __call__(self, inputs: ModelInputs) -> jax.Array:
        """``[B]`` float32 scores of the rows."""
        hidden = self.backbone.hidden_states(*inputs)
        last = last_token_index(inputs.attention_mask)
        picked = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        return self.score(picked.astype(jnp.float32))[:, 0]

    def prepare(self, **processor_outputs: Any) -> ModelInputs:
        return self.backbone.prepare(**processor_outputs)


@nnx.jit
def reward_scores(model: QwenVLRewardModel, inputs: ModelInputs) -> jax.Array:
    """Jitted ``model(inputs)`` (no gradients)."""
    return model(inputs)


def save_reward_model(model: QwenVLRewardModel, path: Union[str, Path], *, dtype: Any = None) -> Path:
    """The backbone as an HF directory plus ``score.safetensors``."""
    from safetensors.numpy import save_file

    from grlhf.models.qwen_vl.checkpoint import save_pretrained

    target = save_pretrained(model.backbone, path, dtype=dtype)
    weight = np.asarray(jax.device_get(model.score.kernel[...]), np.float32).T  # [1, H], transformers' layout
    save_file({SCORE_KEY: np.ascontiguousarray(weight)}, str(Path(target) / SCORE_FILE))
    return Path(target)


def read_head(path: Union[str, Path]) -> Optional[np.ndarray]:
    """``score.weight`` ``[1, H]`` saved in the directory ``path``; None when it has no head."""
    from safetensors.numpy import load_file

    score_file = Path(path) / SCORE_FILE
    if not score_file.is_file():
        return None
    weights = load_file(str(score_file))
    if SCORE_KEY not in weights:
        raise ValueError(f"{score_file}: no {SCORE_KEY!r} tensor (found {sorted(weights)})")
    return weights[SCORE_KEY]


def with_head(backbone: QwenVLForConditionalGeneration, head: Optional[np.ndarray] = None,
              seed: int = 0) -> QwenVLRewardModel:
    """A reward model on ``backbone`` with the head ``[1, H]``, or a new one (``N(0, 0.02)``, seeded) as a
    fresh transformers ``*ForSequenceClassification`` starts."""
    model = QwenVLRewardModel(backbone, rngs=nnx.Rngs(seed))
    if head is not None:
        expected = (1, backbone.config.text.hidden_size)
        if tuple(head.shape) != expected:
            raise WeightsMismatch(f"reward head of shape {tuple(head.shape)}, expected {expected} for this backbone")
        model.score.kernel[...] = jnp.asarray(np.asarray(head).T, jnp.float32)
    return model


def load_reward_model(path: Union[str, Path], *, head: Optional[np.ndarray] = None, seed: int = 0,
                      **kwargs: Any) -> QwenVLRewardModel:
    """A reward model from ``save_reward_model``'s directory (``head``, when given, replaces the saved
    one); a plain HF directory gets a new head. ``kwargs`` go to ``from_pretrained`` (dtype, mesh, ...)."""
    from grlhf.models.qwen_vl.checkpoint import from_pretrained

    return with_head(from_pretrained(path, **kwargs), read_head(path) if head is None else head, seed)


def has_reward_head(path: Union[str, Path]) -> bool:
    return (Path(path) / SCORE_FILE).is_file()


__all__ = ["QwenVLRewardModel", "has_reward_head", "last_token_index", "load_reward_model", "read_head",
           "reward_scores", "save_reward_model", "with_head"]
