"""Aggregation modes (§11.4), PPO clip loss (§11.3), micro-batch exactness, verl reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grlhf.rl import AGG_MODES, aggregate, ppo_clip_loss
from tests.rl import verl_reference as ref

LOSS_MAT = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
MASK = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize("mode,expected", [("token-mean", 3.4), ("seq-mean-token-sum", 8.5),
                                           ("seq-mean-token-mean", 3.75), ("seq-mean-token-sum-norm", 2.125),
                                           ("token-sum", 17.0)])
def test_aggregation_spec_vectors(mode, expected):
    total, denom = aggregate(LOSS_MAT, MASK, mode, scale=4)
    assert float(total / denom) == pytest.approx(expected, rel=1e-6)


def test_aggregation_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown aggregation mode 'mean'"):
        aggregate(LOSS_MAT, MASK, "mean")
    with pytest.raises(ValueError, match="needs scale="):
        aggregate(LOSS_MAT, MASK, "seq-mean-token-sum-norm")


def test_masked_nan_does_not_poison():
    values = LOSS_MAT.at[0, 3].set(jnp.nan)
    for mode in AGG_MODES:
        total, _ = aggregate(values, MASK, mode, scale=4)
        assert np.isfinite(float(total))


@pytest.mark.parametrize("adv,ratio,verl,verl_high", [(1.0, 1.5, -1.2, -1.28), (-1.0, 0.5, 0.8, 0.8),
                                                      (-1.0, 5.0, 3.0, 3.0), (2.0, 0.9, -1.8, -1.8),
                                                      (0.5, float(np.exp(0.1)), -0.5525855, -0.5525855),
                                                      (-1.0, 1.1, 1.1, 1.1), (1.0, 1.0, -1.0, -1.0)])
def test_ppo_per_token_spec_vectors(adv, ratio, verl, verl_high):
    logp = jnp.array([[np.log(ratio)]], jnp.float32)
    args = (logp, jnp.zeros((1, 1)), jnp.array([adv]), jnp.ones((1, 1)))
    assert float(ppo_clip_loss(*args)[0]) == pytest.approx(verl, rel=1e-5)
    assert float(ppo_clip_loss(*args, clip_high=0.28)[0]) == pytest.approx(verl_high, rel=1e-5)


def test_dual_clip_off_gives_plain_ppo():
    args = (jnp.array([[np.log(5.0)]], jnp.float32), jnp.zeros((1, 1)), jnp.array([-1.0]), jnp.ones((1, 1)))
    assert float(ppo_clip_loss(*args, dual_clip=None)[0]) == pytest.approx(5.0, rel=1e-5)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_clip_loss(*args, dual_clip=1.0)


def test_log_ratio_clamped_to_20():
    args = (jnp.array([[25.0]]), jnp.zeros((1, 1)), jnp.array([1.0]), jnp.ones((1, 1)))
    total, _, metrics = ppo_clip_loss(*args, clip_high=1e12)
    assert float(total) == pytest.approx(-4.85165195e8, rel=1e-5)
    assert float(metrics["approx_kl"]) == pytest.approx(-20.0)


def test_on_policy_values_and_gradient_weights():
    """Spec §11.3a: A = [+1, -1], lengths [2, 4], ratio 1."""
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    adv = jnp.array([1.0, -1.0])
    logp = jnp.full((2, 4), -1.0)

    def loss(x, agg, scale=None):
        total, denom, _ = ppo_clip_loss(x, jax.lax.stop_gradient(x), adv, mask, agg=agg, scale=scale)
        return total / denom

    assert float(loss(logp, "token-mean")) == pytest.approx(1 / 3, rel=1e-6)
    assert float(loss(logp, "seq-mean-token-mean")) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(jax.grad(loss)(logp, "token-mean"), -adv[:, None] * mask / 6, atol=1e-7)
    np.testing.assert_allclose(jax.grad(loss)(logp, "seq-mean-token-mean"),
                               -adv[:, None] * mask * jnp.array([[1 / 4], [1 / 8]]), atol=1e-7)
    np.testing.assert_allclose(jax.grad(loss)(logp, "seq-mean-token-sum-norm", 8.0), -adv[:, None] * mask / 16, atol=1e-7)


@st.composite
def rollouts(draw):
    batch, length = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, length + 1, batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
    logp = -rng.exponential(1.0, (batch, length)).astype(np.float32)
    old = (logp + rng.normal(0, draw(st.sampled_from([0.05, 0.3, 3.0])), (batch, length))).astype(np.float32)
    per_token = draw(st.booleans())
    adv = rng.normal(0, 1, (batch, length) if per_token else (batch,)).astype(np.float32)
    return logp, old, adv, mask


@given(rollouts(), st.sampled_from(AGG_MODES), st.sampled_from([(0.2, 0.2, 3.0), (0.2, 0.28, None), (0.1, 0.3, 2.0)]))
def test_ppo_matches_verl_reference(batch, mode, clips):
    logp, old, adv, mask = batch
    clip_low, clip_high, dual = clips
    kwargs = dict(clip_low=clip_low, clip_high=clip_high, agg=mode, scale=12.0)

    def ours(x):
        total, denom, metrics = ppo_clip_loss(x, old, adv, mask, dual_clip=dual, **kwargs)
        return total / jnp.maximum(denom, 1.0), metrics

    (value, metrics), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(logp))
    logp_t = torch.tensor(logp, requires_grad=True)
    theirs, their_metrics = ref.ppo_clip_loss(logp_t, torch.tensor(old), torch.tensor(adv), torch.tensor(mask),
                                              clip_low, clip_high, dual or 3.0, mode, 12.0, dual is not None)
    if mask.sum() == 0:
        assert float(value) == 0.0
        return
    theirs.backward()
    np.testing.assert_allclose(float(value), theirs.item(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, logp_t.grad.numpy(), rtol=1e-6, atol=1e-6)
    for name in ("clipfrac", "clipfrac_lower", "approx_kl"):
        np.testing.assert_allclose(float(metrics[name]), their_metrics[name].item(), rtol=1e-6, atol=1e-6)


@given(rollouts(), st.sampled_from(AGG_MODES), st.integers(1, 6))
def test_micro_batches_sum_to_the_whole_batch(batch, mode, n_micro):
    logp, old, adv, mask = batch
    n_micro = min(n_micro, logp.shape[0])
    whole_total, whole_denom, _ = ppo_clip_loss(logp, old, adv, mask, agg=mode, scale=12.0)
    totals, denoms = [], []
    for rows in np.array_split(np.arange(logp.shape[0]), n_micro):
        total, denom, _ = ppo_clip_loss(logp[rows], old[rows], adv[rows], mask[rows], agg=mode, scale=12.0)
        totals.append(float(total))
        denoms.append(float(denom))
    if mode == "token-sum":
        assert sum(totals) == pytest.approx(float(whole_total), rel=1e-5, abs=1e-5)
        assert all(d == 1.0 for d in denoms)
    else:
        assert sum(denoms) == float(whole_denom)
        if whole_denom > 0:
            assert sum(totals) / sum(denoms) == pytest.approx(float(whole_total / whole_denom), rel=1e-5, abs=1e-6)


def test_runs_under_jit_with_per_token_advantages():
    rng = np.random.default_rng(0)
    logp, old = (-rng.exponential(1.0, (3, 5)).astype(np.float32) for _ in range(2))
    adv, mask = rng.normal(size=(3, 5)).astype(np.float32), np.ones((3, 5), np.float32)
    eager = ppo_clip_loss(logp, old, adv, mask, agg="seq-mean-token-mean")
    jitted = jax.jit(lambda *a: ppo_clip_loss(*a, agg="seq-mean-token-mean"))(logp, old, adv, mask)
    np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-6)
    np.testing.assert_allclose(jitted[2]["clipfrac"], eager[2]["clipfrac"])


def test_bradley_terry_matches_torch_logsigmoid_and_its_gradient():
    from grlhf.rl import bradley_terry_loss

    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=16).astype(np.float32) * 5, rng.normal(size=16).astype(np.float32) * 5
    chosen[0], rejected[0] = 60.0, -60.0  # a large margin: softplus stays finite where log(sigmoid) would not
    total, sums = bradley_terry_loss(jnp.asarray(chosen), jnp.asarray(rejected))
    grad = jax.grad(lambda c: bradley_terry_loss(c, jnp.asarray(rejected))[0])(jnp.asarray(chosen))
    tc = torch.tensor(chosen, requires_grad=True)
    expected = -torch.nn.functional.logsigmoid(tc - torch.tensor(rejected)).sum()
    expected.backward()
    assert float(total) == pytest.approx(expected.item(), rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), tc.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert int(sums["accuracy"]) == int(np.sum(chosen > rejected))


def test_bradley_terry_sums_accumulate_exactly_over_micro_batches():
    from grlhf.rl import bradley_terry_loss

    chosen, rejected = jnp.linspace(-2, 3, 10), jnp.linspace(1, -1, 10)
    whole, _ = bradley_terry_loss(chosen, rejected)
    parts = sum(float(bradley_terry_loss(chosen[i:i + 3], rejected[i:i + 3])[0]) for i in range(0, 10, 3))
    assert float(whole) == pytest.approx(parts, rel=1e-6)
