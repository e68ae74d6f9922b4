"""The statistics of the evaluations: percentile-bootstrap intervals, correlations and row groups (pure functions).

The bootstrap resamples *units* (a preference pair with both its orders, a question with all its
answers, a prompt), so the rows that belong together stay together. Correlations are written here in
numpy (scipy is not a dependency; the tests check them against scipy.stats where it is installed).
"""

from __future__ import annotations

from typing import Callable, Hashable, Optional, Sequence

import numpy as np

LEVEL = 0.95


def group_rows(keys: Sequence[Optional[Hashable]]) -> dict:
    """``{key: [row indices]}`` of the rows' ``keys``, keys sorted; rows whose key is None are left out."""
    rows: dict = {}
    for i, key in enumerate(keys):
        if key is not None:
            rows.setdefault(key, []).append(i)
    return dict(sorted(rows.items()))


def bootstrap_interval(statistic: Callable[[np.ndarray], float], units: int, *, resamples: int = 1000,
                       level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """The percentile interval of ``statistic(indices)`` over ``resamples`` draws of ``units`` unit indices
    with replacement. No units: ``(nan, nan)``; a statistic that is NaN on a draw is left out of it."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if units == 0 or resamples < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, units, units)) for _ in range(resamples)], np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(values: Sequence[float], **kw) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-unit ``values``."""
    v = np.asarray(values, np.float64)
    return bootstrap_interval(lambda idx: float(v[idx].mean()), len(v), **kw)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r; NaN when either side is constant or has fewer than 2 values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    return float(np.clip((x @ y) / np.sqrt((x @ x) * (y @ y)), -1.0, 1.0))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks (scipy's ``rankdata(method="average")``)."""
    v = np.asarray(values, np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size, np.float64)
    ranks[order] = np.arange(1, v.size + 1)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rho (ties get their average rank); NaN when either side is constant or too short."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return pearson(average_ranks(x), average_ranks(y))


def grouped_correlation_interval(correlation: Callable, x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                                 **kw) -> tuple[float, float]:
    """Bootstrap interval of ``correlation(x, y)`` resampling whole groups (a question's answers)."""
    ids = np.unique(groups)
    rows = [np.flatnonzero(groups == g) for g in ids]

    def statistic(idx: np.ndarray) -> float:
        take = np.concatenate([rows[i] for i in idx])
        return correlation(x[take], y[take])

    return bootstrap_interval(statistic, len(ids), **kw)


__all__ = ["LEVEL", "average_ranks", "bootstrap_interval", "grouped_correlation_interval", "mean_interval", "pearson", "spearman"]
