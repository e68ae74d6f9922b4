"""KL estimators: spec values and gradients (rl_math.md §11.2), the '+' forms, verl reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grlhf.rl import KL_KINDS, kl_penalty
from tests.rl import verl_reference as ref

# (logp, ref) -> k1, abs, k2, k3 (verl, clamped); grads wrt logp: k1, k2, k3
SPEC = [
    ((-1.0, -1.5), (0.5, 0.5, 0.125, 0.10653066), (1.0, 0.5, 0.39346934)),
    ((-2.0, -1.0), (-1.0, 1.0, 0.5, 0.71828183), (1.0, -1.0, -1.7182818)),
    ((-0.1, -30.0), (29.9, 29.9, 447.005, 10.0), (1.0, 29.9, 0.0)),
    ((-30.0, -0.1), (-29.9, 29.9, 447.005, 10.0), (1.0, -29.9, 0.0)),
    ((-1.0, -1.0), (0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
]


def _value_and_grad(kind, logp, ref_logp):
    fn = lambda x: kl_penalty(x, jnp.float32(ref_logp), kind)  # noqa: E731
    return float(fn(jnp.float32(logp))), float(jax.grad(fn)(jnp.float32(logp)))


@pytest.mark.parametrize("inputs,values,grads", SPEC)
def test_spec_values_and_gradients(inputs, values, grads):
    logp, ref_logp = inputs
    for kind, expected in zip(("k1", "abs", "k2", "k3"), values):
        assert _value_and_grad(kind, logp, ref_logp)[0] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for kind, expected in zip(("k1", "k2", "k3"), grads):
        assert _value_and_grad(kind, logp, ref_logp)[1] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_abs_gradient_is_sign_and_zero_at_zero():
    grad = jax.grad(lambda x: jnp.sum(kl_penalty(x, jnp.zeros(3), "abs")))(jnp.array([-0.5, 0.0, 0.5]))
    np.testing.assert_array_equal(grad, [-1.0, 0.0, 1.0])


@pytest.mark.parametrize("alias,base", [("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")])
def test_aliases(alias, base):
    logp, ref_logp = jnp.array([-0.3, -2.0, -5.0]), jnp.array([-1.0, -0.5, -4.0])
    np.testing.assert_array_equal(kl_penalty(logp, ref_logp, alias), kl_penalty(logp, ref_logp, base))


@pytest.mark.parametrize("base", ["k1", "abs", "k2", "k3"])
@pytest.mark.parametrize("inputs", [s[0] for s in SPEC])
def test_straight_through_value_of_base_gradient_of_k2(base, inputs):
    logp, ref_logp = inputs
    value, grad = _value_and_grad(base + "+", logp, ref_logp)
    assert value == pytest.approx(_value_and_grad(base, logp, ref_logp)[0], rel=1e-6)
    assert grad == pytest.approx(logp - ref_logp, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", ["abs", "k2", "k3", "k1+", "k3+", "low_var_kl+"])
def test_gradient_pulls_logp_towards_ref(kind):
    # Minimising the penalty moves logp against its gradient: towards ref (spec pitfall P10).
    for logp, ref_logp in [(-0.5, -1.5), (-2.0, -0.7)]:
        grad = _value_and_grad(kind, logp, ref_logp)[1]
        assert np.sign(grad) == np.sign(logp - ref_logp)


def test_expected_gradients_on_a_categorical():
    """Spec §11.2b: E[grad k2] = E[grad k3+] = grad KL(pi||ref); E[grad k3] = grad KL(ref||pi); E[grad k1] = 0."""
    theta = jnp.array([0.3, -0.5, 1.2, 0.0])
    ref_logp = jax.nn.log_softmax(jnp.array([0.0, 0.4, 0.1, -0.3]))
    pi = jax.nn.softmax(theta)

    def expected_grad(kind):
        # Tokens are sampled from pi (no gradient through the sampling), weighted by pi.
        per_token = lambda t: kl_penalty(jax.nn.log_softmax(t), ref_logp, kind)  # noqa: E731
        return jax.grad(lambda t: jnp.sum(jax.lax.stop_gradient(pi) * per_token(t)))(theta)

    reverse = [-0.06607197, -0.14565014, 0.26066943, -0.04894732]
    forward = [-0.01546556, -0.24727657, 0.2741993, -0.01145717]
    np.testing.assert_allclose(expected_grad("k2"), reverse, atol=1e-6)
    np.testing.assert_allclose(expected_grad("k3+"), reverse, atol=1e-6)
    np.testing.assert_allclose(expected_grad("k3"), forward, atol=1e-6)
    np.testing.assert_allclose(expected_grad("k1"), np.zeros(4), atol=1e-7)


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="unknown KL kind 'full'.*low_var_kl"):
        kl_penalty(jnp.zeros(2), jnp.zeros(2), "full")


logps = st.floats(-40.0, 0.0, width=32)


@given(st.lists(st.tuples(logps, logps), min_size=1, max_size=32), st.sampled_from(KL_KINDS))
def test_matches_verl_reference_values_and_gradients(pairs, kind):
    logp = np.array([p[0] for p in pairs], np.float32)
    ref_logp = np.array([p[1] for p in pairs], np.float32)
    weights = np.linspace(0.5, 1.5, len(pairs)).astype(np.float32)
    fn = jax.jit(lambda x, r: jnp.sum(weights * kl_penalty(x, r, kind)))
    ours_value = kl_penalty(jnp.asarray(logp), jnp.asarray(ref_logp), kind)
    ours_grad = jax.grad(fn)(jnp.asarray(logp), jnp.asarray(ref_logp))

    logp_t = torch.tensor(logp, requires_grad=True)
    theirs_value = ref.kl_penalty(logp_t, torch.tensor(ref_logp), kind)
    (torch.tensor(weights) * theirs_value).sum().backward()
    np.testing.assert_allclose(ours_value, theirs_value.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours_grad, logp_t.grad.numpy(), rtol=1e-6, atol=1e-6)
