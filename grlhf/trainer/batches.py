"""Prompt + response rows -> device micro-batches for the train step, with old and reference log-probs.

Rows are encoded per micro-batch (right-padded to a length bucket, images to a patch bucket), so each
micro-batch carries its own vision inputs. Per-token values are aligned with the *targets*
``input_ids[:, 1:]``: the log-prob of response token ``t`` at position ``p`` sits in column ``p - 1``.
Old and reference log-probs are computed on the devices and stay there.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grlhf.data.batching import Batch, device_inputs
from grlhf.models.qwen_vl.sharding import batch_sharding, to_host
from grlhf.trainer.step import TrainBatch, compute_logprobs, response_positions


def place(array: np.ndarray, mesh=None, axis: int = 0) -> jax.Array:
    """A host array on the devices, its ``axis`` split over the mesh's batch axes (when there is a mesh)."""
    if mesh is None:
        return jnp.asarray(array)
    sharding = batch_sharding(mesh, array.shape, axis)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def scatter_response_values(values: Sequence[Sequence[float]], loss_mask: np.ndarray) -> np.ndarray:
    """Per-row response values (one per response token, in order) into a ``loss_mask``-shaped array."""
    out = np.zeros(loss_mask.shape, np.float32)
    for row, row_values in enumerate(values):
        columns = np.flatnonzero(loss_mask[row] > 0)
        if len(columns) != len(row_values):
            raise ValueError(f"row {row}: {len(row_values)} values for {len(columns)} response tokens")
        out[row, columns] = row_values
    return out


def supervised_batches(model, host_batches: Sequence[Batch], mesh=None, windows: bool = True) -> list[TrainBatch]:
    """Device micro-batches for a supervised loss: inputs, the response mask and (``windows``) the response
    windows, the only positions whose logits the step then computes (without: the whole rows')."""
    return [TrainBatch(device_inputs(model, host, mesh), place(host.response_mask[:, 1:], mesh),
                       positions=place(response_positions(host.response_mask[:, 1:]), mesh) if windows else None)
            for host in host_batches]


def rl_batches(model, host_batches: Sequence[Batch], *, temperature: float, reference=None,
               sampler_logprobs: Sequence, use_sampler_logprobs: bool = False, mesh=None,
               head_chunk: int = 8192, windows: bool = True) -> tuple[list[TrainBatch], dict[str, float]]:
    """Device micro-batches with old log-probs (the trainer's, or the sampler's when asked) and, with a
    ``reference`` model, its log-probs; advantages are filled in later (``TrainBatch._replace``). Also
    returns the sampler-vs-trainer log-prob gap (``logprob_diff_mean/max``) over all response tokens."""
    out, offset, gaps = [], 0, []
    for host, batch in zip(host_batches, supervised_batches(model, host_batches, mesh, windows)):
        mask, rows = batch.loss_mask, batch.loss_mask.shape[0]
        old = compute_logprobs(model, batch.inputs, temperature, batch.positions, head_chunk) * mask
        sampled = place(scatter_response_values(sampler_logprobs[offset:offset + rows], host.response_mask[:, 1:]),
                        mesh)
        diff = jnp.abs(sampled - old) * mask
        gaps.append((diff.sum(), diff.max(), mask.sum()))
        ref = (compute_logprobs(reference, batch.inputs, temperature, batch.positions, head_chunk) * mask
               if reference is not None else None)
        out.append(batch._replace(old_logprobs=sampled if use_sampler_logprobs else old, ref_logprobs=ref))
        offset += rows
    gap_sum, gap_max, tokens = (to_host(jnp.stack(column)) for column in zip(*gaps))
    return out, {"logprob_diff_mean": float(gap_sum.sum() / max(tokens.sum(), 1.0)),
                 "logprob_diff_max": float(gap_max.max())}

__all__ = ["place", "rl_batches", "scatter_response_values", "supervised_batches"]
