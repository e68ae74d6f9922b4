"""``projections.dense`` and ``projections.swiglu`` with their written-out backward passes against JAX's autodiff of the
same ``nnx.Linear`` calls: forward values bit for bit, gradients of input, kernels and biases to float32
rounding; the dtype of the layers is kept; ``written=False`` is autodiff itself; the whole model's
``attention_impl='xla_autodiff'`` leaves no custom VJP in the decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grlhf.models.qwen_vl.layers import linear
from grlhf.models.qwen_vl.projections import dense, swiglu, written_backward

RTOL = 1e-5  # float32: the weight gradient is the same sum over tokens, taken in another order
ATOL = 1e-5


def _layers(shapes, *, bias: bool, dtype=jnp.float32, seed: int = 0):
    """``nnx.Linear`` layers of the given (in, out) shapes with O(1) random kernels and biases."""
    rngs = nnx.Rngs(seed)
    layers = [linear(i, o, bias=bias, rngs=rngs, dtype=dtype, param_dtype=jnp.float32) for i, o in shapes]
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 2 * len(layers)))
    for layer in layers:
        layer.kernel[...] = jax.random.normal(next(keys), layer.kernel.shape) / np.sqrt(layer.kernel.shape[0])
        key = next(keys)
        if bias:
            layer.bias[...] = jax.random.normal(key, layer.bias.shape)
    return layers


def _compare(block, layers, x):
    """Outputs and gradients (input and every parameter) of ``block(x, layers, written)`` for both values."""
    weights = jax.random.normal(jax.random.PRNGKey(7), block(x, layers, False).shape)

    def loss(layers, x, written):
        return jnp.sum(jnp.tanh(block(x, layers, written)) * weights)

    results = []
    for written in (False, True):
        out = block(x, layers, written)
        grads = nnx.grad(lambda layers, x: loss(layers, x, written), argnums=(0, 1))(layers, x)
        results.append((out, jax.tree.leaves(grads)))
    return results


def _dense_block(x, layers, written):
    return dense(x, layers[0], written)


def _swiglu_block(x, layers, written):
    return swiglu(x, *layers, written)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("block, shapes", [(_dense_block, [(12, 20)]),
                                           (_swiglu_block, [(12, 28), (12, 28), (28, 12)])],
                         ids=["dense", "swiglu"])
def test_the_written_backward_matches_autodiff(block, shapes, bias):
    layers = _layers(shapes, bias=bias)
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 5, 12))
    (ref_out, ref_grads), (out, grads) = _compare(block, layers, x)
    assert bool(jnp.all(out == ref_out))  # the same forward operations
    assert len(grads) == len(ref_grads) == len(shapes) * (2 if bias else 1) + 1
    for grad, ref in zip(grads, ref_grads):
        assert grad.shape == ref.shape and grad.dtype == ref.dtype
        assert float(jnp.max(jnp.abs(ref))) > 0.1  # the comparison is not of zeros
        np.testing.assert_allclose(grad, ref, rtol=RTOL, atol=ATOL)


def test_a_token_matrix_without_batch_axis():
    """The vision tower's projections take ``[tokens, width]``."""
    layers = _layers([(8, 24), (8, 24), (24, 8)], bias=True, seed=2)
    x = jax.random.normal(jax.random.PRNGKey(4), (9, 8))
    (ref_out, ref_grads), (out, grads) = _compare(_swiglu_block, layers, x)
    assert bool(jnp.all(out == ref_out))
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, rtol=RTOL, atol=ATOL)


def test_the_layers_dtype_is_kept():
    """bf16 layers (float32 parameters) compute in bf16 either way; the parameter gradients are float32."""
    layers = _layers([(16, 32), (16, 32), (32, 16)], bias=False, dtype=jnp.bfloat16, seed=1)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 16))
    (ref_out, ref_grads), (out, grads) = _compare(_swiglu_block, layers, x)
    assert out.dtype == ref_out.dtype == jnp.bfloat16
    assert bool(jnp.all(out == ref_out))
    for grad, ref in zip(grads, ref_grads):
        assert grad.dtype == ref.dtype
        np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(ref, np.float32), rtol=0.05, atol=0.05)


def test_only_xla_autodiff_keeps_autodiff():
    assert not written_backward("xla_autodiff")
    assert all(written_backward(impl) for impl in ("xla", "cudnn", "auto"))
    layers = _layers([(6, 10), (6, 10), (10, 6)], bias=False)
    x = jnp.ones((2, 6))

    def primitives(written):
        jaxpr = jax.make_jaxpr(lambda x: jnp.sum(swiglu(x, *layers, written)))(x)
        return {str(e.primitive) for e in jaxpr.eqns}

    assert "custom_vjp_call" in primitives(True) and "custom_vjp_call" not in primitives(False)


def test_runs_under_jit_and_remat():
    layers = _layers([(8, 16), (8, 16), (16, 8)], bias=True, seed=3)
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 3, 8))

    def loss(x):
        return jnp.sum(swiglu(dense(x, layers[0], True)[..., :8], *layers, True) ** 2)

    plain = jax.grad(loss)(x)
    np.testing.assert_allclose(jax.jit(jax.grad(jax.checkpoint(loss)))(x), plain, rtol=RTOL, atol=ATOL)
