"""``model.remat`` policies: names, and the same values and gradients under each (only memory differs)."""

import jax
import numpy as np
import pytest
from flax import nnx

from grlhf.models.qwen_vl import from_pretrained
from grlhf.models.qwen_vl.remat import REMAT_POLICIES, remat_name
from tests.models.qwen_vl import tiny


def test_names_and_bools():
    assert [remat_name(name) for name in REMAT_POLICIES] == list(REMAT_POLICIES)
    assert (remat_name(True), remat_name(False), remat_name(None)) == ("full", "none", "none")
    assert (remat_name("True"), remat_name("false"), remat_name("DOTS")) == ("full", "none", "dots")
    with pytest.raises(ValueError, match="unknown remat policy 'minimal'; expected one of none, full, dots"):
        remat_name("minimal")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.save(tiny.hf_model("qwen2_5_vl", scale=1.0), tmp_path_factory.mktemp("remat"))


def _loss_and_grads(model, inputs):
    def loss(model):
        logits = model.forward(*inputs)
        return (jax.nn.log_softmax(logits, -1)[..., 0] ** 2).mean()
    return nnx.value_and_grad(loss)(model)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_each_policy_gives_the_same_loss_and_gradients(model_dir, remat):
    """Text decoder and vision tower (Qwen2.5-VL windows and full-attention blocks) under the policy: loss and
    every gradient equal no remat (float32, rtol 1e-5)."""
    inputs = None
    results = []
    for name in ("none", remat):
        model = from_pretrained(model_dir, remat=name)
        assert model.model.language_model.remat == name and model.model.visual.remat == name
        inputs = inputs or model.prepare(**tiny.make_inputs("one_image"))
        results.append(_loss_and_grads(model, inputs))
    (loss, grads), (loss_r, grads_r) = results
    np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
