"""The train step shared by every stage: tempered log-probs, the loss, exact micro-batch accumulation.

A batch is split into micro-batches on the host. Each micro-batch contributes the *sum* of its loss and
its denominator (``rl.aggregate``); gradients of the sums are added, and the update divides by the
total denominator, so the result equals one pass over the whole batch for every aggregation mode.

Logits exist only where the loss reads them: each row's response window (``TrainBatch.positions``, the
target columns of its response, ``response_positions``), and there the LM head is fused with the log-softmax
a vocabulary chunk at a time (``rl.fused_head``; ``LossConfig.head_chunk``), so no ``[B, T, V]`` float32
logits are ever held. Without positions the whole rows' logits are computed (the reference formula).

The loss is ``pg + kl_coef * KL(policy || reference) - entropy_coef * H`` for RL (``kind="ppo"``; the
PPO clip loss of ``rl.losses``, the KL estimator of ``rl.kl``) and the token NLL for supervised
warm starts (``kind="sft"``). Metrics come back as sums with their weights, finalised once per update.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from grlhf.data.batching import response_window_width
from grlhf.models.qwen_vl.inputs import ModelInputs
from grlhf.models.qwen_vl.sharding import constrain_state
from grlhf.rl import aggregate, bradley_terry_loss, kl_penalty, logprobs_and_entropy, ppo_clip_loss
from grlhf.rl.fused_head import head_logprobs_and_entropy


@dataclass(frozen=True)
class LossConfig:
    """Static hyperparameters of the loss (hashable: part of the compiled program's key)."""

    kind: str = "ppo"  # ppo | sft | bt (Bradley-Terry, for a score-only reward model)
    temperature: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = 3.0
    agg: str = "token-mean"
    kl_coef: float = 0.0
    kl_type: str = "low_var_kl"
    entropy_coef: float = 0.0
    agg_scale: Optional[float] = None  # seq-mean-token-sum-norm only
    head_chunk: int = 8192  # vocabulary columns per chunk of the fused LM head; 0: the window's logits at once


class TrainBatch(NamedTuple):
    """One micro-batch; each loss reads what it needs (Bradley-Terry: the inputs only). Per-token arrays are
    aligned with the *targets* ``input_ids[:, 1:]``."""

    inputs: ModelInputs
    loss_mask: Any = None  # [B, L-1] 1 where the target is a response token (sft, ppo)
    advantages: Any = None  # [B] (ppo)
    old_logprobs: Any = None  # [B, L-1] (ppo)
    ref_logprobs: Any = None  # [B, L-1] (ppo with a KL loss)
    positions: Any = None  # [B, W] int32 target columns of each row's response window (response_positions)


def response_positions(loss_mask: np.ndarray, width: Optional[int] = None) -> np.ndarray:
    """``[B, W]`` target columns holding each row's response: ``W`` consecutive columns per row, starting at
    its first masked column (moved left where the window would pass the end), so the window covers every
    masked column once. ``W`` (default: the longest response rounded up to a power of two, at least 16 and at
    most the row length) is a shape the step compiles for, hence the rounding."""
    loss_mask = np.asarray(loss_mask)
    rows, columns = loss_mask.shape
    masked = loss_mask > 0
    first = np.where(masked.any(axis=1), masked.argmax(axis=1), 0)
    last = np.where(masked.any(axis=1), columns - 1 - masked[:, ::-1].argmax(axis=1), 0)
    longest = int((last - first + 1).max()) if rows else 1
    if width is None:
        width = response_window_width(longest, columns)
    if width < longest or width > columns:
        raise ValueError(f"a response window of {width} columns cannot hold a response of {longest} in rows of "
                         f"{columns}")
    start = np.minimum(first, columns - width)
    return (start[:, None] + np.arange(width)[None, :]).astype(np.int32)


def _take_columns(values: jax.Array, positions: jax.Array) -> jax.Array:
    """``values [B, T, ...]`` at ``positions [B, W]`` -> ``[B, W, ...]``."""
    index = positions.reshape(positions.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def target_logprobs(model, inputs: ModelInputs, temperature: float = 1.0, positions=None,
                    head_chunk: int = 8192) -> tuple[jax.Array, jax.Array]:
    """``(log p(x_{t+1} | x_{<=t}), entropy)`` of ``softmax(logits / T)``: ``[B, L-1]`` for every position,
    or ``[B, W]`` at the target columns ``positions`` (the LM head fused, ``head_chunk`` columns at a time;
    0: the window's logits at once)."""
    targets = jnp.asarray(inputs.input_ids)[:, 1:]
    if positions is None:
        logits = model.forward(*inputs)
        return logprobs_and_entropy(logits[:, :-1], targets, temperature)
    positions = jnp.asarray(positions, jnp.int32)
    hidden = _take_columns(model.hidden_states(*inputs), positions)
    targets = _take_columns(targets, positions)
    if not head_chunk:
        return logprobs_and_entropy(model.logits_from_hidden(hidden), targets, temperature)
    rows, width, size = hidden.shape
    logp, ent = head_logprobs_and_entropy(hidden.reshape(rows * width, size), model.head_weight(),
                                          targets.reshape(-1), temperature, chunk=head_chunk,
                                          precision=model.precision)
    return logp.reshape(rows, width), ent.reshape(rows, width)


@partial(nnx.jit, static_argnames=("temperature", "head_chunk"))
def compute_logprobs(model, inputs: ModelInputs, temperature: float = 1.0, positions=None,
                     head_chunk: int = 8192) -> jax.Array:
    """Target log-probs ``[B, L-1]`` without gradients (old log-probs of the policy, the reference's); with
    ``positions``, computed there only and zero elsewhere."""
    logp = target_logprobs(model, inputs, temperature, positions, head_chunk)[0]
    if positions is None:
        return logp
    rows = jnp.arange(logp.shape[0])[:, None]
    full = jnp.zeros((logp.shape[0], jnp.shape(inputs.input_ids)[1] - 1), logp.dtype)
    return full.at[rows, jnp.asarray(positions, jnp.int32)].set(logp)


def loss_sums(model, batch: TrainBatch, cfg: LossConfig) -> tuple[jax.Array, tuple[jax.Array, dict]]:
    """``(loss total, (denominator, metric sums))`` of one micro-batch; the loss is ``total / denom``."""
    if cfg.kind == "bt":
        return _bradley_terry_sums(model, batch)
    logp, ent = target_logprobs(model, batch.inputs, cfg.temperature, batch.positions, cfg.head_chunk)
    if batch.positions is not None:  # every per-token array in the response windows' layout
        window = lambda x: None if x is None else _take_columns(jnp.asarray(x), batch.positions)  # noqa: E731
        batch = batch._replace(loss_mask=window(batch.loss_mask), old_logprobs=window(batch.old_logprobs),
                               ref_logprobs=window(batch.ref_logprobs))
    mask = jnp.asarray(batch.loss_mask, jnp.float32)
    tokens = jnp.sum(mask)
    masked_sum = lambda x: jnp.sum(jnp.where(mask > 0, x, 0.0))  # noqa: E731
    ent_total, _ = aggregate(ent, mask, cfg.agg, scale=cfg.agg_scale)
    if cfg.kind == "sft":
        total, denom = aggregate(-logp, mask, cfg.agg, scale=cfg.agg_scale)
        sums = {"nll": masked_sum(-logp), "entropy": masked_sum(ent), "tokens": tokens}
    elif cfg.kind == "ppo":
        total, denom, pg = ppo_clip_loss(logp, batch.old_logprobs, batch.advantages, mask, clip_low=cfg.clip_low,
                                         clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, agg=cfg.agg,
                                         scale=cfg.agg_scale)
        sums = {"pg_loss": total, "entropy": masked_sum(ent), "tokens": tokens,
                **{k: pg[k] * tokens for k in ("clipfrac", "clipfrac_lower", "approx_kl")}}
        if cfg.kl_coef > 0:
            kl = kl_penalty(logp, batch.ref_logprobs, cfg.kl_type)
            kl_total, _ = aggregate(kl, mask, cfg.agg, scale=cfg.agg_scale)
            total = total + cfg.kl_coef * kl_total
            sums["kl"] = masked_sum(jax.lax.stop_gradient(kl))
    else:
        raise ValueError(f"unknown loss kind {cfg.kind!r}")
    if cfg.entropy_coef:
        total = total - cfg.entropy_coef * ent_total
    sums["loss"] = total
    return total, (denom, jax.tree.map(jax.lax.stop_gradient, sums))


def _bradley_terry_sums(model, batch: TrainBatch) -> tuple[jax.Array, tuple[jax.Array, dict]]:
    """A reward model's micro-batch: rows ``[chosen_1..chosen_P, rejected_1..rejected_P]``; the denominator
    and the ``tokens`` weight of the metrics are the number of pairs ``P``."""
    scores = model(batch.inputs)
    pairs = scores.shape[0] // 2
    total, sums = bradley_terry_loss(scores[:pairs], scores[pairs:])
    count = jnp.asarray(pairs, jnp.float32)
    sums = {**sums, "loss": total, "tokens": count}
    return total, (count, jax.tree.map(jax.lax.stop_gradient, sums))


@partial(nnx.jit, static_argnames=("cfg",))
def micro_grads(model, batch: TrainBatch, cfg: LossConfig):
    """Gradients of the loss *sum* of one micro-batch, its denominator and metric sums."""
    grad_fn = nnx.grad(lambda m: loss_sums(m, batch, cfg), has_aux=True)
    grads, (denom, sums) = grad_fn(model)
    return grads, denom, sums


@jax.jit
def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def _scale(grads, denom):
    grads = jax.tree.map(lambda g: g / denom, grads)
    return grads, optax.tree.norm(grads)


@nnx.jit
def _apply(model, optimizer, grads):
    optimizer.update(model, grads)
    # Parameters and moments stay in their rules' shardings (under a mesh): left free, XLA returns the
    # replicated norms split over fsdp, and every jitted function of the model compiles a second time.
    nnx.update(model, constrain_state(nnx.state(model, nnx.Param)))
    nnx.update(optimizer, constrain_state(nnx.state(optimizer, nnx.optimizer.OptState)))


def _mesh_of(tree) -> Optional[jax.sharding.Mesh]:
    """The mesh of the first array of ``tree`` with a ``NamedSharding`` (None: unsharded)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding):
            return leaf.sharding.mesh
    return None


class UpdateCalls:
    """The update's jitted calls with the model and its optimizer bound once (``nnx.cached_partial``).

    ``nnx.jit`` walks the graph of its model and optimizer arguments on every call: ~6 ms for the tiny
    model and ~18 ms with its optimizer, a tenth of a warm-start step of the embedded default. Bound, the
    walk is done once; the compiled programs are the same. A phase makes one for its optimizer and drops it
    with the phase (it holds both objects)."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.micro_grads = nnx.cached_partial(micro_grads, model)
        self.apply = nnx.cached_partial(_apply, model, optimizer)

    def bound_to(self, model, optimizer) -> bool:
        return self.model is model and self.optimizer is optimizer


class UpdateResult(NamedTuple):
    applied: bool  # False when the loss or the gradient was not finite
    metrics: dict[str, float]


def accumulate_and_update(model, optimizer, micro_batches, cfg: LossConfig,
                          calls: Optional[UpdateCalls] = None) -> UpdateResult:
    """One optimizer update from a list of micro-batches (exact accumulation); skipped when not finite.

    ``token-sum`` has denominator 1 per micro-batch, so the total denominator is 1, not their count.
    Returned metrics: ``loss`` (total / denom), ``grad_norm``, and token means of the loss parts.
    ``calls``: the jitted calls bound to this model and optimizer (a phase's; made here when not given).
    """
    if calls is None:
        calls = UpdateCalls(model, optimizer)
    elif not calls.bound_to(model, optimizer):
        raise ValueError("UpdateCalls bound to another model or optimizer")
    grads = denom = None
    sums: dict = {}
    for batch in micro_batches:
        g, d, s = calls.micro_grads(batch, cfg)
        grads = g if grads is None else _add(grads, g)
        denom = d if denom is None else denom + d
        sums = s if not sums else _add(sums, s)
    if grads is None:
        raise ValueError("an update needs at least one micro-batch")
    if cfg.agg == "token-sum":
        denom = jnp.ones((), jnp.float32)
    denom = jnp.maximum(denom, 1e-8)  # an update with no response tokens changes nothing
    grads, grad_norm = _scale(grads, denom)
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    tokens = max(host.pop("tokens"), 1.0)
    metrics = {"loss": host.pop("loss") / float(denom), "grad_norm": float(grad_norm),
               "pairs" if cfg.kind == "bt" else "tokens": tokens}
    if "pg_loss" in host:
        metrics["pg_loss"] = host.pop("pg_loss") / float(denom)
    metrics.update({k: v / tokens for k, v in host.items()})
    applied = bool(np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]))
    if applied:
        mesh = _mesh_of(grads)
        if mesh is None:
            calls.apply(grads)
        else:
            with jax.set_mesh(mesh):
                calls.apply(grads)
    return UpdateResult(applied, metrics)


__all__ = ["LossConfig", "TrainBatch", "UpdateCalls", "UpdateResult", "accumulate_and_update", "compute_logprobs", "loss_sums",
           "micro_grads", "response_positions", "target_logprobs"]
