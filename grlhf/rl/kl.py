"""Per-token KL estimators between the policy and a reference (verl's ``kl_penalty``).

``d = logp - ref_logp``. Values and gradients with respect to ``logp``:

====================  =======================================  =========================
kind (aliases)        value                                    d value / d logp
====================  =======================================  =========================
``k1`` (``kl``)       d                                        1
``abs``               abs(d)                                   sign(d)
``k2`` (``mse``)      d^2 / 2                                  d
``k3`` (low_var_kl)   clip(exp(x) - x - 1, -10, 10),           1 - exp(-d) inside the
                      x = clip(-d, -20, 20)                    clamps, 0 where one binds
``<kind>+``           the value of ``<kind>``                  d (the gradient of k2)
====================  =======================================  =========================

The ``+`` forms are straight-through: value of the base estimator, unbiased gradient of
KL(pi || ref) per token (k3's own gradient is that of the reverse direction, KL(ref || pi)).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

K3_EXP_CLAMP = 20.0
K3_VALUE_CLAMP = 10.0


def _k1(d: jax.Array) -> jax.Array:
    return d


def _abs(d: jax.Array) -> jax.Array:
    # |d| with gradient sign(d), 0 at d = 0 as torch.abs (jnp.abs's gradient there is 1)
    return d * jax.lax.stop_gradient(jnp.sign(d))


def _k2(d: jax.Array) -> jax.Array:
    return 0.5 * d * d


def _k3(d: jax.Array) -> jax.Array:
    x = jnp.clip(-d, -K3_EXP_CLAMP, K3_EXP_CLAMP)
    return jnp.clip(jnp.exp(x) - x - 1.0, -K3_VALUE_CLAMP, K3_VALUE_CLAMP)


_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "k1": _k1,
    "kl": _k1,
    "abs": _abs,
    "k2": _k2,
    "mse": _k2,
    "k3": _k3,
    "low_var_kl": _k3,
}

KL_KINDS: tuple[str, ...] = tuple(_ESTIMATORS) + tuple(f"{name}+" for name in _ESTIMATORS)


def _estimator(kind: str) -> tuple[Callable[[jax.Array], jax.Array], bool]:
    base, straight_through = (kind[:-1], True) if kind.endswith("+") else (kind, False)
    if base not in _ESTIMATORS:
        raise ValueError(f"unknown KL kind {kind!r}; expected one of {', '.join(KL_KINDS)}")
    return _ESTIMATORS[base], straight_through


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str = "low_var_kl") -> jax.Array:
    """Per-token KL estimate of the policy against the reference, float32, same shape as ``logp``."""
    estimator, straight_through = _estimator(kind)
    d = jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)
    value = estimator(d)
    if not straight_through:
        return value
    k2 = _k2(d)
    return k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(value)
