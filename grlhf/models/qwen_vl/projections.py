"""The projections of the decoder and the vision tower with written-out backward passes.

``dense`` is one ``nnx.Linear``, ``swiglu`` the Qwen2 MLP ``down(silu(gate(x)) * up(x))``; both compute their
forward exactly as ``nnx.Linear`` does (its dtype promotion, precision and bias add). Their backward passes take
each weight gradient ``x^T dy`` as ``(dy^T x)^T``: XLA:CPU then reads both operands as they lie and transposes
only the small ``[out, in]`` result, where autodiff's had it write the ``[tokens, features]`` gradients
transposed first (~68 ms of an ~0.6 s step in bench/model_step.py). The same gradients to float32 rounding.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
from flax import nnx


def written_backward(impl: str) -> bool:
    """Whether the blocks take their written-out backward passes (``layers._attend``, ``dense``, ``swiglu``):
    every attention impl but ``xla_autodiff``, which keeps JAX's autodiff (and its rounding) throughout."""
    return impl != "xla_autodiff"


def dense(x: jax.Array, layer: nnx.Linear, written: bool = True) -> jax.Array:
    """``layer(x)``; with ``written``, its backward is ``_dense_bwd`` (the weight gradient by ``_weight_grad``,
    without autodiff's transposing copy of ``x`` or of the output gradient on XLA:CPU)."""
    if not written:
        return layer(x)
    x, kernel, bias = _promoted(layer, x)
    return _dense(x, kernel, bias, layer.precision)


def swiglu(x: jax.Array, gate: nnx.Linear, up: nnx.Linear, down: nnx.Linear, written: bool = True) -> jax.Array:
    """``down(silu(gate(x)) * up(x))``, the Qwen2 MLP, as ``nnx.Linear`` computes each projection (its dtype
    and precision). With ``written``, the backward pass is ``_swiglu_bwd``: the same gradients to float32
    rounding, without the transposing copies of ``[tokens, intermediate]`` that autodiff's weight gradients
    cost on XLA:CPU (bench/model_step.py)."""
    if not written:
        return down(jax.nn.silu(gate(x)) * up(x))
    (x, w_gate, b_gate), (_, w_up, b_up), (_, w_down, b_down) = (_promoted(m, x) for m in (gate, up, down))
    return _swiglu(x, w_gate, w_up, w_down, b_gate, b_up, b_down, gate.precision)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense(x, kernel, bias, precision):
    return _project(x, kernel, bias, precision)


def _dense_fwd(x, kernel, bias, precision):
    return _project(x, kernel, bias, precision), (x, kernel, bias is not None)


def _dense_bwd(precision, residuals, d_out):
    x, kernel, has_bias = residuals
    return _input_grad(d_out, kernel, precision), _weight_grad(x, d_out, precision), _bias_grad(d_out, has_bias)


_dense.defvjp(_dense_fwd, _dense_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(7,))
def _swiglu(x, w_gate, w_up, w_down, b_gate, b_up, b_down, precision):
    return _swiglu_fwd(x, w_gate, w_up, w_down, b_gate, b_up, b_down, precision)[0]


def _swiglu_fwd(x, w_gate, w_up, w_down, b_gate, b_up, b_down, precision):
    g, u = _project(x, w_gate, b_gate, precision), _project(x, w_up, b_up, precision)
    out = _project(jax.nn.silu(g) * u, w_down, b_down, precision)
    return out, (x, g, u, w_gate, w_up, w_down, tuple(b is not None for b in (b_gate, b_up, b_down)))


def _swiglu_bwd(precision, residuals, d_out):
    """``h = silu(g) * u``: ``dh = d_out W_down^T``, ``du = dh silu(g)``, ``dg = dh u s (1 + g (1 - s))`` with
    ``s = sigmoid(g)``; each weight's gradient by ``_weight_grad``, each bias's the sum over tokens."""
    x, g, u, w_gate, w_up, w_down, has_bias = residuals
    s = jax.nn.sigmoid(g)
    silu = g * s
    d_h = _input_grad(d_out, w_down, precision)
    d_u = d_h * silu
    d_g = d_h * u * s * (1 + g * (1 - s))
    d_x = _input_grad(d_g, w_gate, precision) + _input_grad(d_u, w_up, precision)
    grads = (d_x, _weight_grad(x, d_g, precision), _weight_grad(x, d_u, precision),
             _weight_grad(silu * u, d_out, precision))
    bias_grads = tuple(_bias_grad(d, has) for d, has in zip((d_g, d_u, d_out), has_bias))
    return grads + bias_grads


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _promoted(layer: nnx.Linear, x: jax.Array) -> tuple:
    """``(x, kernel, bias)`` in the dtype ``nnx.Linear.__call__`` computes in."""
    bias = layer.bias[...] if layer.bias is not None else None
    return layer.promote_dtype((x, layer.kernel[...], bias), dtype=layer.dtype)


def _project(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array], precision) -> jax.Array:
    """``x @ kernel + bias`` as ``nnx.Linear`` computes it."""
    out = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
    return out if bias is None else out + bias


def _input_grad(d_out: jax.Array, kernel: jax.Array, precision) -> jax.Array:
    """``d_out @ kernel^T``."""
    return jax.lax.dot_general(d_out, kernel, (((d_out.ndim - 1,), (1,)), ((), ())), precision=precision)


def _weight_grad(inputs: jax.Array, grads: jax.Array, precision) -> jax.Array:
    """``inputs^T @ grads`` over all leading axes, computed as ``(grads^T inputs)^T``: XLA:CPU then reads both
    operands as they lie and transposes only the small ``[out, in]`` result."""
    flat_in, flat_grad = inputs.reshape(-1, inputs.shape[-1]), grads.reshape(-1, grads.shape[-1])
    return jax.lax.dot_general(flat_grad, flat_in, (((0,), (0,)), ((), ())), precision=precision).T


def _bias_grad(d_out: jax.Array, has_bias: bool) -> Optional[jax.Array]:
    """The sum over all leading axes; None for a layer without a bias."""
    return d_out.sum(tuple(range(d_out.ndim - 1))) if has_bias else None
