"""Token sampling: filters, greedy, reproducibility, and frequencies that match softmax (chi-square)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from grlhf.rl import token_logprobs
from grlhf.rollout.sampling import filter_logits, sample_tokens

LOGITS = jnp.array([[2.0, 1.0, 0.5, -1.0, 0.0, 1.5]])


def test_top_k_keeps_the_k_largest():
    kept = np.isfinite(np.asarray(filter_logits(LOGITS, top_k=2)))
    np.testing.assert_array_equal(kept, [[True, False, False, False, False, True]])


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.asarray(jax.nn.softmax(LOGITS))[0]  # [0.38, 0.14, 0.085, 0.019, 0.051, 0.23]
    kept = np.isfinite(np.asarray(filter_logits(LOGITS, top_p=0.6)))[0]
    assert kept.tolist() == [True, False, False, False, False, True]  # 0.38 + 0.23 reaches 0.6
    assert probs[kept].sum() >= 0.6
    assert np.isfinite(np.asarray(filter_logits(LOGITS, top_p=1e-6))).sum() == 1  # the top token survives


def test_bad_parameters():
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(LOGITS, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(LOGITS, top_k=7)
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(jax.random.key(0), LOGITS, temperature=-1.0)


def test_greedy_and_logprobs_match_the_trainer():
    tokens, logprobs = sample_tokens(jax.random.key(0), LOGITS, temperature=0.0)
    assert tokens.tolist() == [0]
    key = jax.random.key(1)
    tokens, logprobs = sample_tokens(key, LOGITS, temperature=0.7, top_k=3)
    np.testing.assert_allclose(logprobs, token_logprobs(LOGITS[:, None], tokens[:, None], 0.7)[:, 0], atol=1e-6)


def test_reproducible_from_a_seed():
    logits = jnp.tile(LOGITS, (64, 1))
    first = sample_tokens(jax.random.key(7), logits)[0]
    assert np.array_equal(first, sample_tokens(jax.random.key(7), logits)[0])
    assert not np.array_equal(first, sample_tokens(jax.random.key(8), logits)[0])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_frequencies_match_softmax(temperature):
    draws = 20000
    logits = jnp.tile(LOGITS, (draws, 1))
    tokens = np.asarray(jax.jit(lambda k: sample_tokens(k, logits, temperature=temperature)[0])(jax.random.key(3)))
    observed = np.bincount(tokens, minlength=6)
    probs = np.asarray(jax.nn.softmax(LOGITS[0] / temperature), np.float64)
    expected = probs / probs.sum() * draws
    assert stats.chisquare(observed, expected).pvalue > 0.001
    other = np.asarray(jax.nn.softmax(LOGITS[0] / (1.5 - temperature)), np.float64)  # the wrong temperature
    assert stats.chisquare(observed, other / other.sum() * draws).pvalue < 1e-6  # the test has power


def test_truncated_sampling_never_leaves_the_support():
    tokens = np.asarray(sample_tokens(jax.random.key(0), jnp.tile(LOGITS, (2000, 1)), top_k=2)[0])
    assert set(np.unique(tokens)) <= {0, 5}
