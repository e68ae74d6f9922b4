"""GRPO / Dr.GRPO / RLOO advantages: spec vectors (rl_math.md §11.1), verl reference, properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grlhf.rl import ADVANTAGES, group_advantages, grpo_advantages, rloo_advantages
from tests.rl import verl_reference as ref

R = [1.0, 0.0, 0.0, 1.0, 0.5]


def test_grpo_spec_vector():
    adv = grpo_advantages(jnp.array(R), jnp.array([3] * 5))
    np.testing.assert_allclose(adv, [0.999998, -0.999998, -0.999998, 0.999998, 0.0], atol=1e-7)


def test_grpo_uses_unbiased_std_not_population():
    adv = grpo_advantages(jnp.array(R), jnp.zeros(5, jnp.int32))
    assert abs(float(adv[0]) - 1.11803149) > 0.1  # the ddof=0 value from the spec


def test_dr_grpo_and_rloo_spec_vectors():
    ids = jnp.zeros(5, jnp.int32)
    np.testing.assert_allclose(grpo_advantages(jnp.array(R), ids, norm_by_std=False), [0.5, -0.5, -0.5, 0.5, 0], atol=1e-7)
    np.testing.assert_allclose(rloo_advantages(jnp.array(R), ids), [0.625, -0.625, -0.625, 0.625, 0], atol=1e-7)


def test_singletons_keep_raw_score():
    adv = grpo_advantages(jnp.array([0.7]), jnp.array([42]))
    np.testing.assert_allclose(adv, [0.6999993], rtol=1e-6)
    assert float(grpo_advantages(jnp.array([0.7]), jnp.array([42]), norm_by_std=False)[0]) == pytest.approx(0.7)
    assert float(rloo_advantages(jnp.array([0.7]), jnp.array([42]))[0]) == pytest.approx(0.7)


def test_near_constant_group_matches_verl_scalar():
    adv = grpo_advantages(jnp.array([0.5, 0.5, 0.5, 0.5001]), jnp.zeros(4, jnp.int32))
    np.testing.assert_allclose(adv, [-0.4902, -0.4902, -0.4902, 1.4706], atol=2e-4)


def test_float32_constant_group_is_exactly_zero():
    # Naive float32 centring gives +0.05603 for every member (spec pitfall P3).
    scores = jnp.full((8,), 0.7, jnp.float32)
    ids = jnp.zeros(8, jnp.int32)
    assert np.all(np.asarray(grpo_advantages(scores, ids)) == 0.0)
    assert np.all(np.asarray(rloo_advantages(scores, ids)) == 0.0)
    assert np.all(np.asarray(grpo_advantages(scores, ids, norm_by_std=False)) == 0.0)


def test_groups_by_id_not_position():
    # Interleaved ids, arbitrary (negative, large) values: same result as contiguous groups.
    scores = jnp.array([1.0, 5.0, 0.0, 7.0, 0.5, 6.0])
    ids = jnp.array([-9, 10**6, -9, 10**6, -9, 10**6])
    adv = grpo_advantages(scores, ids)
    np.testing.assert_allclose(adv[::2], grpo_advantages(jnp.array([1.0, 0.0, 0.5]), jnp.zeros(3)), atol=1e-7)
    np.testing.assert_allclose(adv[1::2], grpo_advantages(jnp.array([5.0, 7.0, 6.0]), jnp.zeros(3)), atol=1e-7)


def test_runs_under_jit():
    ids = jnp.array([0, 0, 0, 0, 0, 1])
    scores = jnp.array(R + [2.0])
    for fn in (grpo_advantages, rloo_advantages):
        np.testing.assert_array_equal(jax.jit(fn)(scores, ids), fn(scores, ids))


# Scores on a 1/8 grid (averages of integer GRM scores) keep every group either exactly constant or
# with std >= 0.04, so float32 and the float64 reference agree to 1e-6 after normalisation.
grid_scores = st.integers(0, 80).map(lambda v: v / 8.0)


@st.composite
def grouped_batches(draw):
    size = draw(st.integers(1, 24))
    scores = draw(st.lists(grid_scores, min_size=size, max_size=size))
    ids = draw(st.lists(st.integers(-5, 5), min_size=size, max_size=size))
    return np.array(scores, np.float32), np.array(ids, np.int32)


@given(grouped_batches(), st.booleans())
def test_grpo_matches_verl_reference(batch, norm_by_std):
    scores, ids = batch
    ours = grpo_advantages(jnp.asarray(scores), jnp.asarray(ids), norm_by_std=norm_by_std)
    theirs = ref.grpo_advantages(torch.tensor(scores, dtype=torch.float64), ids.tolist(), norm_by_std=norm_by_std)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6, atol=1e-6)


@given(grouped_batches())
def test_rloo_matches_verl_reference(batch):
    scores, ids = batch
    theirs = ref.rloo_advantages(torch.tensor(scores, dtype=torch.float64), ids.tolist())
    np.testing.assert_allclose(rloo_advantages(jnp.asarray(scores), jnp.asarray(ids)), theirs.numpy(), rtol=1e-6, atol=1e-6)


@given(st.floats(-1e6, 1e6, width=32), st.integers(2, 16))
def test_any_constant_group_gives_zero(value, size):
    scores = jnp.full((size,), value, jnp.float32)
    assert np.all(np.asarray(grpo_advantages(scores, jnp.zeros(size, jnp.int32))) == 0.0)
    assert np.all(np.asarray(rloo_advantages(scores, jnp.zeros(size, jnp.int32))) == 0.0)


@given(grouped_batches())
def test_grpo_advantages_are_centred_per_group(batch):
    scores, ids = batch
    adv = np.asarray(grpo_advantages(jnp.asarray(scores), jnp.asarray(ids)))
    for group in np.unique(ids):
        rows = ids == group
        if rows.sum() > 1:
            assert abs(adv[rows].sum()) < 1e-4


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_group_advantages_dispatches_each_estimator(norm_by_std):
    scores, ids = jnp.array(R + [2.0, 0.0]), jnp.array([3] * 5 + [7, 7])
    expected = {"grpo": grpo_advantages(scores, ids, norm_by_std=norm_by_std),
                "drgrpo": grpo_advantages(scores, ids, norm_by_std=False),
                "rloo": rloo_advantages(scores, ids)}
    assert set(expected) == set(ADVANTAGES)
    for estimator in ADVANTAGES:
        np.testing.assert_array_equal(group_advantages(scores, ids, estimator, norm_by_std=norm_by_std),
                                      expected[estimator])
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        group_advantages(scores, ids, "ppo")
