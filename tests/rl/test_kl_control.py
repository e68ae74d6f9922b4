"""KL-in-reward and its fixed / adaptive controllers (spec §6, §11.7)."""

import jax.numpy as jnp
import numpy as np
import pytest

from grlhf.rl import KL_CONTROLLERS, KL_KINDS, KLController, apply_kl_in_reward, sequence_kl_penalty


@pytest.mark.parametrize("current_kl,expected", [(9.0, 0.100512), (3.0, 0.099488), (6.0, 0.1), (100.0, 0.100512)])
def test_adaptive_update_spec_vectors(current_kl, expected):
    controller = KLController("adaptive", init_coef=0.1, target_kl=6.0, horizon=10000)
    assert float(controller.update(0.1, current_kl, 256)) == pytest.approx(expected, rel=1e-6)


def test_fixed_controller_keeps_the_coefficient():
    assert KLController("fixed", init_coef=0.02).update(0.02, 50.0, 256) == 0.02


def test_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="'fixed' or 'adaptive'"):
        KLController("pid")
    with pytest.raises(ValueError, match="target_kl > 0"):
        KLController("adaptive", target_kl=0.0)


def test_kl_in_reward_spec_vector():
    old = jnp.array([[-1.0, -0.5, -2.0, -0.1]])
    ref = jnp.array([[-1.2, -0.5, -1.5, -0.3]])
    rewards, current_kl = apply_kl_in_reward(jnp.array([1.0]), old, ref, jnp.ones((1, 4)), 0.001)
    np.testing.assert_allclose(rewards, [[-0.0002, 0.0, 0.0005, 0.9998]], atol=1e-7)
    assert float(rewards.sum()) == pytest.approx(1.0001, abs=1e-6)
    assert float(current_kl) == pytest.approx((0.2 + 0 - 0.5 + 0.2) / 4, abs=1e-7)


def test_kl_in_reward_places_score_at_last_valid_token():
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    zeros = jnp.zeros((2, 4))
    rewards, _ = apply_kl_in_reward(jnp.array([3.0, -1.0]), zeros, zeros, mask, 0.1)
    np.testing.assert_array_equal(rewards, [[0, 3.0, 0, 0], [0, 0, 0, -1.0]])


def test_controller_kinds_are_the_constant():
    assert KL_CONTROLLERS == ("fixed", "adaptive")
    for kind in KL_CONTROLLERS:
        KLController(kind)


@pytest.mark.parametrize("kind", KL_KINDS)
def test_sequence_penalty_is_the_token_rewards_summed(kind):
    rng = np.random.default_rng(0)
    old = jnp.asarray(rng.normal(-1.0, 0.5, (4, 6)), jnp.float32)
    ref = jnp.asarray(rng.normal(-1.0, 0.5, (4, 6)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], jnp.float32)
    scores = jnp.asarray([1.0, -0.5, 0.25, 2.0])
    token_rewards, kl_tokens = apply_kl_in_reward(scores, old, ref, mask, 0.05, kind)
    penalty, kl_sequences = sequence_kl_penalty(old, ref, mask, 0.05, kind)
    assert penalty.shape == (4,) and penalty.dtype == jnp.float32
    np.testing.assert_allclose(scores - penalty, token_rewards.sum(-1), rtol=1e-6, atol=1e-6)
    assert float(kl_sequences) == pytest.approx(float(kl_tokens), rel=1e-6)
    assert float(penalty[3]) == 0.0  # an empty row pays nothing


def test_sequence_penalty_spec_vector():
    old = jnp.array([[-1.0, -0.5, -2.0, -0.1]])
    ref = jnp.array([[-1.2, -0.5, -1.5, -0.3]])
    penalty, current_kl = sequence_kl_penalty(old, ref, jnp.ones((1, 4)), 0.001)
    assert float(penalty[0]) == pytest.approx(0.001 * (0.2 + 0 - 0.5 + 0.2), abs=1e-8)
    assert float(current_kl) == pytest.approx((0.2 + 0 - 0.5 + 0.2) / 4, abs=1e-7)


def test_sequence_penalty_carries_no_gradient():
    import jax

    old = jnp.array([[-1.0, -0.5]])
    grad = jax.grad(lambda o: sequence_kl_penalty(o, jnp.zeros_like(o), jnp.ones_like(o), 0.1)[0].sum())(old)
    np.testing.assert_array_equal(grad, 0.0)
