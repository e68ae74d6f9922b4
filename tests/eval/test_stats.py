"""Bootstrap intervals and correlations against numpy / scipy and known sampling behaviour; row groups."""

import numpy as np
import pytest

from grlhf.eval.stats import average_ranks, bootstrap_interval, group_rows, grouped_correlation_interval, \
    mean_interval, pearson, spearman

scipy_stats = pytest.importorskip("scipy.stats")


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(1, 6, 50).astype(float)  # many ties, as 1-5 human scores have
    y = x + rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-12)
    np.testing.assert_allclose(average_ranks(x), scipy_stats.rankdata(x))
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3])) and np.isnan(spearman([1], [2]))


def test_bootstrap_interval_of_a_mean_has_the_normal_width():
    values = np.repeat([0.0, 1.0], 200)  # mean 0.5, standard error 0.025
    low, high = mean_interval(values, resamples=2000, seed=0)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01) and high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert mean_interval(values, resamples=200, seed=3) == mean_interval(values, resamples=200, seed=3)
    assert mean_interval([0.7] * 9) == (pytest.approx(0.7), pytest.approx(0.7))
    assert all(np.isnan(bootstrap_interval(lambda idx: 0.0, 0)))


def test_grouped_interval_resamples_whole_groups():
    # two groups, each perfectly correlated inside; any resample of whole groups keeps r = 1
    x = np.array([1.0, 2, 3, 10, 11, 12])
    groups = np.array([0, 0, 0, 1, 1, 1])
    low, high = grouped_correlation_interval(pearson, x, 2 * x, groups, resamples=50)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_group_rows_sorts_keys_keeps_row_order_and_leaves_out_none():
    assert group_rows(["b", None, "a", "b"]) == {"a": [2], "b": [0, 3]}
    assert list(group_rows(["z", "a", "m"])) == ["a", "m", "z"] and group_rows([]) == {}
