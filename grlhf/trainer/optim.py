"""The optimizer of Table 4: AdamW, linear warm-up then cosine decay, global-norm gradient clipping."""

from __future__ import annotations

import optax

SCHEDULES = ("cosine", "constant")  # lr_schedule(kind=...)


def lr_schedule(peak_lr: float, total_steps: int, *, warmup_ratio: float = 0.03, kind: str = "cosine",
                min_lr_ratio: float = 0.0) -> optax.Schedule:
    """``int(warmup_ratio * total_steps)`` linear warm-up steps from 0 (verl's rule), then cosine to
    ``min_lr_ratio * peak_lr`` at ``total_steps`` (or constant)."""
    warmup = int(warmup_ratio * total_steps)
    if kind == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak_lr)
        return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), optax.constant_schedule(peak_lr)],
                                    [warmup])
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else peak_lr, peak_lr, warmup,
                                              max(total_steps, warmup + 1), end_value=peak_lr * min_lr_ratio)


def make_optimizer(peak_lr: float, total_steps: int, *, weight_decay: float = 0.01, warmup_ratio: float = 0.03,
                   schedule: str = "cosine", min_lr_ratio: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, max_grad_norm: float = 1.0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(transformation, schedule)``; clipping comes first, so AdamW sees clipped gradients."""
    lr = lr_schedule(peak_lr, total_steps, warmup_ratio=warmup_ratio, kind=schedule, min_lr_ratio=min_lr_ratio)
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
    parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts), lr


__all__ = ["SCHEDULES", "lr_schedule", "make_optimizer"]
