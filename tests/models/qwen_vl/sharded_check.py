"""Sharded vs unsharded Qwen-VL on 8 simulated CPU devices, for each model family.

Run from the repository root (``test_sharding.py`` does this in a subprocess, because the device count
must be set before jax is imported and the rest of the suite runs on one device):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.models.qwen_vl.sharded_check [family ...]

Prints one JSON object of measurements (errors, shard shapes, timings) as its last line of stdout; the
assertions live in ``test_sharding.py``.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from grlhf.models.qwen_vl import QwenVLConfig, QwenVLForConditionalGeneration, from_pretrained
from grlhf.models.qwen_vl.inputs import ModelInputs
from grlhf.models.qwen_vl.sharding import (BATCH, constrain, constrain_state, create_sharded, make_mesh,
                                           partition_spec, shard_inputs, state_shardings)
from grlhf.rl import token_logprobs
from grlhf.tiny import write_tiny_checkpoint
from tests.data.conftest import CORPUS
from tests.models.qwen_vl import tiny

# Parameters that must be split over more than one device (and held whole by none).
BIG = (r".*embed_tokens\.embedding", r"lm_head\.kernel", r".*self_attn\.q_proj\.kernel",
       r".*mlp\.(gate_proj|up_proj|down_proj)\.kernel", r".*attn\.qkv\.kernel")


def _name(path) -> str:
    return ".".join(str(part) for part in path)


def _flat(model) -> dict[str, jax.Array]:
    return {_name(path): var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def check_parameters(model, reference, mesh) -> dict:
    """Every parameter carries its rule's NamedSharding and the checkpoint's values; the big ones are split."""
    sharded, ref = _flat(model), _flat(reference)
    wrong_sharding, wrong_value, big = [], [], {}
    for name, array in sharded.items():
        expected = NamedSharding(mesh, partition_spec(name, array.shape, mesh))
        if array.sharding != expected:
            wrong_sharding.append(f"{name}: {array.sharding} != {expected}")
        if not np.array_equal(np.asarray(array), np.asarray(ref[name])):
            wrong_value.append(name)
        if any(re.fullmatch(pattern, name) for pattern in BIG):
            shards = array.addressable_shards
            big[name] = dict(shape=list(array.shape), shard_shapes=sorted({tuple(s.data.shape) for s in shards}),
                             distinct_slices=len({str(s.index) for s in shards}), devices=len(shards),
                             spec=str(array.sharding.spec))
    return dict(count=len(sharded), wrong_sharding=wrong_sharding, wrong_value=wrong_value, big=big)


def check_create_sharded(config: QwenVLConfig, mesh) -> dict:
    build = lambda: QwenVLForConditionalGeneration(config, rngs=nnx.Rngs(0))  # noqa: E731
    start = time.perf_counter()
    sharded = _flat(create_sharded(build, mesh))
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    reference = _flat(build())
    reference_seconds = time.perf_counter() - start
    wrong_sharding, split = [], 0
    for name, array in sharded.items():
        expected = NamedSharding(mesh, partition_spec(name, array.shape, mesh))
        if array.sharding != expected:
            wrong_sharding.append(f"{name}: {array.sharding} != {expected}")
        split += any(s.data.size < array.size for s in array.addressable_shards)
    error = max(float(np.max(np.abs(np.asarray(sharded[k]) - np.asarray(reference[k])))) for k in reference)
    # create_sharded's initialiser, partitioned: does any per-device buffer have a vocabulary-sized dim?
    _, abstract = nnx.split(nnx.eval_shape(build))
    hlo = jax.jit(lambda: nnx.state(build()), out_shardings=state_shardings(abstract, mesh)).lower().compile().as_text()
    vocab = config.text.vocab_size
    full_vocab_buffers = sorted(set(re.findall(rf"\w+\[[^\]]*\b{vocab}\b[^\]]*\]", hlo)))
    return dict(same_names=sorted(sharded) == sorted(reference), max_abs_error=error, split=split,
                count=len(sharded), wrong_sharding=wrong_sharding, seconds=seconds,
                reference_seconds=reference_seconds, full_vocab_buffers=full_vocab_buffers,
                vocab_shard_buffers=f"[{vocab // 2}," in hlo or f",{vocab // 2}]" in hlo)


def batch4_inputs() -> dict:
    """Two ``left_padded`` batches stacked (different pixels and text), so 4 rows of equal length."""
    first, second = tiny.make_inputs("left_padded", seed=0), tiny.make_inputs("left_padded", seed=1)
    special = np.isin(second["input_ids"], (tiny.IMAGE, tiny.VIDEO, tiny.VSTART, tiny.VEND, tiny.PAD))
    second["input_ids"] = np.where(special, second["input_ids"], second["input_ids"] + 20)
    return {key: np.concatenate([first[key], second[key]]) for key in first}


def loss_weights(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """``[B, L-1]``: the real tokens after each row's last vision-end token (the targets of the loss)."""
    positions = np.arange(input_ids.shape[1])
    last_end = np.max(np.where(input_ids == tiny.VEND, positions, -1), axis=1, keepdims=True)
    return ((positions > last_end) & (attention_mask == 1))[:, 1:].astype(np.float32)


def make_step(graphdef):
    """Jitted ``(params, inputs, weights) -> ((loss, logits), grads)``: logits and the gradient of the
    negative mean log-prob of the weighted target tokens, in one compiled program. Under a mesh the
    gradients are constrained to the parameters' shardings (as a training step would)."""

    def loss_fn(params, inputs: ModelInputs, weights):
        logits = nnx.merge(graphdef, params).forward(*inputs)
        logp = token_logprobs(logits[:, :-1], inputs.input_ids[:, 1:])
        return -jnp.sum(logp * weights) / jnp.sum(weights), logits

    def step(params, inputs: ModelInputs, weights):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, inputs, weights)
        return (loss, logits), constrain_state(grads)  # gradients sharded like the parameters

    return jax.jit(step)


def check_forward_and_grad(model, reference, mesh, raw: dict) -> dict:
    inputs = reference.prepare(**raw)
    weights = loss_weights(inputs.input_ids, inputs.attention_mask)
    graphdef, ref_params = nnx.split(reference, nnx.Param)
    _, params = nnx.split(model, nnx.Param)
    step = make_step(graphdef)

    start = time.perf_counter()
    (ref_loss, ref_logits), ref_grads = step(ref_params, inputs, weights)
    unsharded_seconds = time.perf_counter() - start

    placed = shard_inputs(inputs, mesh)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        (loss, logits), grads = step(params, placed, jax.device_put(weights, placed.attention_mask.sharding))
        jax.block_until_ready(grads)
    sharded_seconds = time.perf_counter() - start

    mask = np.asarray(inputs.attention_mask) == 1
    logits_error = float(np.max(np.abs(np.asarray(logits)[mask] - np.asarray(ref_logits)[mask])))
    grad_errors, grad_shardings = {}, []  # name -> (max abs error, max abs reference); mismatched shardings
    flat_params = dict(nnx.to_flat_state(params))
    for (path, g), (_, r) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)):
        g, r, param = g.get_value(), np.asarray(r.get_value()), flat_params[path].get_value()
        if not g.sharding.is_equivalent_to(param.sharding, g.ndim):
            grad_shardings.append(f"{_name(path)}: {g.sharding.spec} vs {param.sharding.spec}")
        grad_errors[_name(path)] = (float(np.max(np.abs(np.asarray(g) - r))), float(np.max(np.abs(r))))
    return dict(batch=int(inputs.input_ids.shape[0]), input_spec=str(placed.input_ids.sharding.spec),
                logits_max_abs=float(np.max(np.abs(np.asarray(ref_logits)[mask]))), logits_error=logits_error,
                loss=float(loss), loss_error=abs(float(loss) - float(ref_loss)), grad_errors=grad_errors,
                grad_shardings=grad_shardings, grad_leaves=len(grad_errors), unsharded_seconds=unsharded_seconds,
                sharded_seconds=sharded_seconds)


def check_constrain(mesh) -> dict:
    x = jnp.arange(32.0).reshape(4, 8)
    spec = P(BATCH, "tp")
    out = dict(identity_eager=constrain(x, spec) is x,
               jaxpr_without_mesh=str(jax.make_jaxpr(lambda v: constrain(v, spec))(x)))
    with jax.set_mesh(mesh):
        out["jaxpr_with_mesh"] = str(jax.make_jaxpr(lambda v: constrain(v, spec))(x))
        y = jax.jit(lambda v: constrain(v * 2, spec))(x)
        out["spec_with_mesh"] = str(y.sharding.spec)
        # a batch of 2 does not divide data x fsdp = 4: the constraint falls back to 'data' alone
        z = jax.jit(lambda v: constrain(v + 1, P(BATCH)))(jnp.ones((2, 8)))
        out["spec_uneven"] = str(z.sharding.spec)
    out["equal"] = bool(np.array_equal(np.asarray(y), 2 * np.asarray(x)))
    return out


def check_sampler(path: Path, mesh) -> dict:
    """``JaxSampler`` on the mesh against the unsharded one, on judge prompts that share prefixes (16, so the
    rows split over the batch axes): the shared-prefix program greedy, the plain one seeded with n = 2;
    tokens and the largest log-prob gap."""
    from grlhf.data.processor import load_processor
    from grlhf.rollout.base import SamplingParams
    from grlhf.rollout.jax_sampler import JaxSampler
    from tests.rollout.judge_requests import judge_requests

    processor, requests = load_processor(path), judge_requests(lone=4)  # 16 rows: split over data x fsdp = 4
    models = dict(sharded=from_pretrained(path, mesh=mesh), reference=from_pretrained(path))
    out = {}
    for name, share, sampling in (("shared_greedy", True, SamplingParams(temperature=0.0, max_tokens=8)),
                                  ("plain_sampled", False, SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=3))):
        runs = {}
        for which, model in models.items():
            sampler = JaxSampler(model, processor=processor, length_buckets=(32, 64, 128, 256, 512),
                                 patch_buckets=(256, 512, 1024), mesh=mesh if which == "sharded" else None,
                                 share_prefix=share)
            function, arrays = sampler.plan(requests)
            rows = arrays[1] if share else arrays[0].input_ids  # the suffix rows, or the plain batch's
            runs[which] = (function.__name__, str(rows.sharding.spec) if which == "sharded" else None,
                           [c for group in sampler.generate(requests, sampling) for c in group])
        (function, spec, got), (reference_function, _, want) = runs["sharded"], runs["reference"]
        out[name] = dict(function=function, reference_function=reference_function, rows=len(got),
                         **{"suffix_spec" if share else "input_spec": spec},
                         same_tokens=[c.token_ids for c in got] == [c.token_ids for c in want],
                         logprob_error=max(float(np.max(np.abs(np.subtract(a.logprobs, b.logprobs))))
                                           for a, b in zip(got, want)))
    return out


def check_family(family: str, mesh) -> dict:
    start = time.perf_counter()
    result = dict(family=family)
    with tempfile.TemporaryDirectory() as directory:
        path = tiny.save(tiny.hf_model(family), Path(directory))
        sharded, reference = from_pretrained(path, mesh=mesh), from_pretrained(path)
        config = reference.config
        result["sampler"] = check_sampler(write_tiny_checkpoint(Path(directory) / "with_processor", family,
                                                                corpus=CORPUS), mesh)
    result["parameters"] = check_parameters(sharded, reference, mesh)
    result["forward"] = {name: check_forward_and_grad(sharded, reference, mesh, raw) for name, raw in
                         (("left_padded", tiny.make_inputs("left_padded")), ("batch4", batch4_inputs()))}
    result["create_sharded"] = check_create_sharded(config, mesh)
    result["seconds"] = time.perf_counter() - start
    return result


def main(families) -> dict:
    """Both families in one process: jax, torch and transformers are imported once."""
    mesh = make_mesh(data=2, fsdp=2, tp=2)
    result = dict(devices=len(jax.devices()), mesh=dict(mesh.shape), constrain=check_constrain(mesh))
    result["families"] = {family: check_family(family, mesh) for family in families}
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:] or tiny.FAMILIES)))
