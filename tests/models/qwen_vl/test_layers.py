"""``layers.attention``'s written-out backward (the flash-style softmax gradient) against autodiff through
the plain formula, on the masks the model builds: causal with right and left padding (rows that see no key
at all), a key-padding mask broadcast over queries and heads, and one mask per head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grlhf.models.qwen_vl.layers import attention

ATOL = 2e-6  # float32: the two backwards round differently (a reduction over D against one over S)


def autodiff_attention(q, k, v, allowed):
    """Grouped-head softmax attention as plain jnp, differentiated by JAX."""
    batch, length, heads, dim = q.shape
    kv_heads = k.shape[2]
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
    scores = jnp.einsum("blhd,bshd->bhls", q, k) * dim**-0.5
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhls,bshd->blhd", jax.nn.softmax(scores, axis=-1), v)


def _masks(batch: int, length: int, heads: int, rng) -> dict[str, np.ndarray]:
    real = np.ones((batch, length), bool)
    real[1, 5:] = False  # right padding
    real[2, :3] = False  # left padding: its first queries see no key at all
    causal = np.tril(np.ones((length, length), bool))
    return {"causal, padded": real[:, None, None, :] & causal,
            "keys only": real[:, None, None, :],
            "per head": rng.random((batch, heads, length, length)) < 0.6}


@pytest.mark.parametrize("mask_name", ["causal, padded", "keys only", "per head"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_the_backward_matches_autodiff(mask_name, kv_heads):
    rng = np.random.default_rng(kv_heads)
    batch, length, heads, dim = 3, 7, 4, 8
    q = jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(batch, length, kv_heads, dim)), jnp.float32) for _ in range(2))
    allowed = jnp.asarray(_masks(batch, length, heads, rng)[mask_name])
    weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    loss = lambda f: lambda *qkv: jnp.sum(f(*qkv, allowed) * weights)  # noqa: E731
    out, grads = jax.value_and_grad(loss(attention), argnums=(0, 1, 2))(q, k, v)
    ref_out, ref_grads = jax.value_and_grad(loss(autodiff_attention), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=ATOL, rtol=1e-6)
    for name, grad, ref in zip("qkv", grads, ref_grads):
        assert float(jnp.max(jnp.abs(ref))) > 0.1, name  # the comparison is not of zeros
        np.testing.assert_allclose(grad, ref, atol=ATOL, rtol=1e-5, err_msg=name)


def test_xla_autodiff_is_the_formula_differentiated_by_jax():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(2, 6, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32) for _ in range(2))
    allowed = jnp.asarray(np.tril(np.ones((6, 6), bool)))[None, None]
    loss = lambda impl: lambda *qkv: jnp.sum(attention(*qkv, allowed, impl=impl) ** 2)  # noqa: E731
    autodiff = jax.grad(loss("xla_autodiff"), argnums=(0, 1, 2))(q, k, v)
    reference = jax.grad(lambda *qkv: jnp.sum(autodiff_attention(*qkv, allowed) ** 2), argnums=(0, 1, 2))(q, k, v)
    written = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for a, b, c in zip(autodiff, reference, written):  # gradients of the squared outputs reach ~20
        np.testing.assert_allclose(a, b, atol=10 * ATOL, rtol=1e-5)
        np.testing.assert_allclose(a, c, atol=10 * ATOL, rtol=1e-5)
    primitives = lambda impl: {str(e.primitive) for e in jax.make_jaxpr(loss(impl))(q, k, v).eqns}  # noqa: E731
    assert "custom_vjp_call" in primitives("xla") and "custom_vjp_call" not in primitives("xla_autodiff")


def test_the_backward_runs_under_jit_and_remat():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 5, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 5, 2, 8)), jnp.float32) for _ in range(2))
    allowed = jnp.asarray(np.tril(np.ones((5, 5), bool)))[None, None]
    loss = lambda q, k, v: jnp.sum(attention(q, k, v, allowed) ** 2)  # noqa: E731
    plain = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for transformed in (jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2))),):
        for a, b in zip(transformed(q, k, v), plain):
            np.testing.assert_allclose(a, b, atol=ATOL)
