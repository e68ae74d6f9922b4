"""Grouped comparison S(y_i): the spec's k = 3 table (§11.6), masks, bias cancellation, reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grlhf.rl import grouped_comparison, grpo_advantages
from tests.rl import verl_reference as ref

# ordered pair (first, second) -> (score of first, score of second), responses numbered from 0
TABLE = {(0, 1): (8, 5), (1, 0): (6, 7), (0, 2): (4, 9), (2, 0): (8, 5), (1, 2): (6, 6), (2, 1): (7, 4)}


def _pairs(table, k=3):
    scores = np.zeros((1, k, k, 2), np.float32)
    valid = np.zeros((1, k, k), bool)
    for (i, j), pair in table.items():
        scores[0, i, j] = pair
        valid[0, i, j] = True
    return scores, valid


def test_spec_table_and_advantages():
    S, counts = grouped_comparison(*_pairs(TABLE))
    np.testing.assert_allclose(S, [[6.0, 5.25, 7.5]])
    np.testing.assert_array_equal(counts, [[4, 4, 4]])
    adv = grpo_advantages(S[0], jnp.zeros(3, jnp.int32))
    np.testing.assert_allclose(adv, [-0.2182177, -0.8728708, 1.0910885], atol=1e-6)


def test_first_position_bias_cancels_with_both_orders():
    scores, valid = _pairs(TABLE)
    biased = scores.copy()
    biased[..., 0] += 1.0
    S, _ = grouped_comparison(scores, valid)
    S_biased, _ = grouped_comparison(biased, valid)
    np.testing.assert_allclose(S_biased, S + 0.5)
    ids = jnp.zeros(3, jnp.int32)
    np.testing.assert_allclose(grpo_advantages(S_biased[0], ids), grpo_advantages(S[0], ids), atol=1e-6)


def test_one_order_does_not_cancel_the_bias():
    scores, valid = _pairs(TABLE)
    biased = scores.copy()
    biased[..., 0] += 1.0
    S, counts = grouped_comparison(scores, valid, both_orders=False)
    S_biased, _ = grouped_comparison(biased, valid, both_orders=False)
    np.testing.assert_allclose(S, [[6.0, 5.5, 7.5]])  # (8+4)/2, (5+6)/2, (9+6)/2
    np.testing.assert_array_equal(counts, [[2, 2, 2]])
    np.testing.assert_allclose(S_biased - S, [[1.0, 0.5, 0.0]])  # response 0 is always shown first


def test_invalid_judgments_are_masked_not_zeroed():
    scores, valid = _pairs(TABLE)
    scores[0, 0, 2] = np.nan
    valid[0, 0, 2] = False
    scores[0, 1, 1] = (1e9, 1e9)  # the diagonal is ignored even if marked valid
    valid[0, 1, 1] = True
    S, counts = grouped_comparison(scores, valid)
    np.testing.assert_allclose(S, [[(8 + 7 + 5) / 3, 5.25, (8 + 7 + 6) / 3]])
    np.testing.assert_array_equal(counts, [[3, 4, 3]])


def test_response_without_scores_gets_empty_score():
    scores, valid = _pairs(TABLE)
    valid[0, 2, :] = False
    valid[0, :, 2] = False
    S, counts = grouped_comparison(scores, valid, empty_score=-1.0)
    assert float(S[0, 2]) == -1.0 and int(counts[0, 2]) == 0


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[G, k, k, 2\]"):
        grouped_comparison(np.zeros((1, 3, 3)), np.ones((1, 3, 3), bool))
    with pytest.raises(ValueError, match="pair_valid"):
        grouped_comparison(np.zeros((1, 3, 3, 2)), np.ones((1, 3), bool))


@st.composite
def judged_groups(draw):
    groups, k = draw(st.integers(1, 3)), draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scores = rng.integers(1, 11, (groups, k, k, 2)).astype(np.float32)
    valid = rng.random((groups, k, k)) < draw(st.sampled_from([0.5, 0.9, 1.0]))
    return scores, valid


@given(judged_groups(), st.booleans(), st.sampled_from([0.0, -1.0]))
def test_matches_loop_reference(batch, both_orders, empty_score):
    scores, valid = batch
    S, counts = jax.jit(grouped_comparison, static_argnames=("both_orders", "empty_score"))(
        scores, valid, both_orders=both_orders, empty_score=empty_score)
    S_ref, counts_ref = ref.grouped_scores(torch.tensor(scores), torch.tensor(valid), both_orders, empty_score)
    np.testing.assert_allclose(S, S_ref.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(counts, counts_ref.numpy())


@given(judged_groups(), st.floats(-3, 3))
def test_bias_cancels_in_advantages_when_all_judgments_are_valid(batch, bias):
    scores, _ = batch
    valid = np.ones(scores.shape[:3], bool)
    biased = scores.copy()
    biased[..., 0] += bias
    k = scores.shape[1]
    ids = jnp.repeat(jnp.arange(scores.shape[0]), k)
    adv = grpo_advantages(grouped_comparison(scores, valid)[0].reshape(-1), ids)
    adv_biased = grpo_advantages(grouped_comparison(biased, valid)[0].reshape(-1), ids)
    np.testing.assert_allclose(adv_biased, adv, atol=1e-4)
