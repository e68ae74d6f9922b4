"""Prompt + response rows -> micro-batches for the train step, with old and reference log-probs.

Rows are encoded per micro-batch (right-padded to a length bucket, images to a patch bucket), so each
micro-batch carries its own vision inputs. Per-token values are aligned with the *targets*
``input_ids[:, 1:]``: the log-prob of response token ``t`` at position ``p`` sits in column ``p - 1``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grlhf.data.batching import Batch, encode_prompt_responses
from grlhf.models.qwen_vl.sharding import batch_sharding, shard_inputs
from grlhf.trainer.distributed import to_host
from grlhf.trainer.step import TrainBatch, compute_logprobs


def place(array: np.ndarray, mesh=None, axis: int = 0) -> jax.Array:
    """A host array on the devices, its ``axis`` split over the mesh's batch axes (when there is a mesh)."""
    if mesh is None:
        return jnp.asarray(array)
    sharding = batch_sharding(mesh, array.shape, axis)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def device_inputs(model, host: Batch, mesh=None):
    """A host batch as the model's ``ModelInputs``, split over the mesh's batch axes (when there is one)."""
    inputs = model.prepare(**host.model_inputs())
    return inputs if mesh is None else shard_inputs(inputs, mesh)


def scatter_response_values(values: Sequence[Sequence[float]], loss_mask: np.ndarray) -> np.ndarray:
    """Per-row response values (one per response token, in order) into a ``loss_mask``-shaped array."""
    out = np.zeros(loss_mask.shape, np.float32)
    for row, row_values in enumerate(values):
        columns = np.flatnonzero(loss_mask[row] > 0)
        if len(columns) != len(row_values):
            raise ValueError(f"row {row}: {len(row_values)} values for {len(columns)} response tokens")
        out[row, columns] = row_values
    return out


def encode_micro_batches(processor, conversations: Sequence[list], responses: Sequence, micro_batch_size: int, *,
                         length_buckets: Sequence[int], patch_buckets: Optional[Sequence[int]] = None) -> list[Batch]:
    """Host batches of at most ``micro_batch_size`` rows, in order."""
    return [encode_prompt_responses(processor, conversations[i:i + micro_batch_size],
                                    responses[i:i + micro_batch_size], length_buckets=length_buckets,
                                    patch_buckets=patch_buckets)
            for i in range(0, len(conversations), micro_batch_size)]


def train_batches(model, host_batches: Sequence[Batch], *, advantages: Optional[np.ndarray] = None,
                  temperature: float = 1.0, reference=None, sampler_logprobs: Optional[Sequence] = None,
                  use_sampler_logprobs: bool = False, need_old: bool = True,
                  mesh=None) -> tuple[list[TrainBatch], dict[str, float]]:
    """Device micro-batches with old log-probs (the trainer's, or the sampler's when asked) and the
    reference's log-probs. Also returns the sampler-vs-trainer log-prob gap (``logprob_diff_mean/max``)
    whenever sampler log-probs are given."""
    out, offset, diffs = [], 0, []
    for host in host_batches:
        rows = host.input_ids.shape[0]
        inputs = device_inputs(model, host, mesh)
        loss_mask = host.response_mask[:, 1:]
        old = (to_host(compute_logprobs(model, inputs, temperature)) * loss_mask if need_old
               else np.zeros(loss_mask.shape, np.float32))
        if sampler_logprobs is not None:
            sampled = scatter_response_values(sampler_logprobs[offset:offset + rows], loss_mask)
            diffs.append(np.abs(sampled - old)[loss_mask > 0])
            if use_sampler_logprobs:
                old = sampled
        ref = (to_host(compute_logprobs(reference, inputs, temperature)) * loss_mask if reference is not None
               else np.zeros_like(old))
        adv = np.zeros(rows, np.float32) if advantages is None else np.asarray(advantages[offset:offset + rows],
                                                                                np.float32)
        out.append(TrainBatch(inputs, place(loss_mask, mesh), place(adv, mesh), place(old, mesh), place(ref, mesh)))
        offset += rows
    metrics = {}
    if diffs:
        gap = np.concatenate(diffs)
        metrics = {"logprob_diff_mean": float(gap.mean()) if gap.size else 0.0,
                   "logprob_diff_max": float(gap.max()) if gap.size else 0.0}
    return out, metrics


__all__ = ["device_inputs", "encode_micro_batches", "place", "scatter_response_values", "train_batches"]
