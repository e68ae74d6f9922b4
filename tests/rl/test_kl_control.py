"""KL-in-reward and its fixed / adaptive controllers (spec §6, §11.7)."""

import jax.numpy as jnp
import numpy as np
import pytest

from grlhf.rl import KLController, apply_kl_in_reward


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
