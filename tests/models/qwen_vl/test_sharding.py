"""Sharding of the Qwen-VL port: the partition rules (in-process, one device, abstract meshes) and
sharded-vs-unsharded parity on 8 simulated CPU devices.

The 8-device checks run ``tests/models/qwen_vl/sharded_check.py`` once in a subprocess (the device count
is fixed when jax is imported, and the rest of the suite runs on one device): both families, the tiny
HF checkpoints loaded with ``from_pretrained(mesh=...)``, ``create_sharded``, forward logits and
gradients (constrained to the parameters' shardings with ``constrain_state``) on a batch of 2 (split
over ``data``) and of 4 (split over ``data`` x ``fsdp``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from grlhf.models.qwen_vl.sharding import (BATCH, MESH_AXES, constrain, constrain_state, fit_spec, make_mesh,
                                           partition_spec)

ROOT = Path(__file__).resolve().parents[3]
FAMILIES = ("qwen2_vl", "qwen2_5_vl")
CASES = ("left_padded", "batch4")
TOL = 1e-5
# the 8 devices, plus cheaper LLVM code generation: compiling dominates the run, and sharded and
# unsharded programs are compiled alike
XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
MESH = AbstractMesh((2, 2, 2), MESH_AXES)


# --- in-process: rules and the no-mesh path -------------------------------------------------------------


@pytest.mark.parametrize("path, shape, spec", [
    ("model.language_model.embed_tokens.embedding", (1024, 64), P("tp", "fsdp")),
    ("lm_head.kernel", (64, 1024), P("fsdp", "tp")),
    ("opt_state.0.mu.lm_head.kernel", (64, 1024), P("fsdp", "tp")),  # optimizer moments follow their params
    ("model.language_model.layers.0.self_attn.q_proj.kernel", (64, 64), P("fsdp", "tp")),
    ("model.language_model.layers.0.self_attn.k_proj.bias", (32,), P("tp")),
    ("model.language_model.layers.0.self_attn.o_proj.kernel", (64, 64), P("tp", "fsdp")),
    ("model.language_model.layers.1.mlp.down_proj.kernel", (128, 64), P("tp", "fsdp")),
    ("model.language_model.norm.scale", (64,), P(None)),
    ("model.visual.blocks.0.attn.qkv.kernel", (32, 96), P("fsdp", "tp")),
    ("model.visual.blocks.0.attn.proj.bias", (32,), P(None)),
    ("model.visual.blocks.3.mlp.gate_proj.bias", (64,), P("tp")),
    ("model.visual.merger.mlp.0.kernel", (128, 128), P("fsdp", "tp")),
    ("model.visual.merger.mlp.2.kernel", (128, 64), P("tp", "fsdp")),
    ("model.visual.patch_embed.proj.kernel", (1176, 32), P("fsdp", None)),
    ("model.language_model.layers.0.self_attn.q_proj.kernel", (64, 3), P("fsdp", None)),  # 3 heads: tp drops
    ("model.language_model.embed_tokens.embedding", (1001, 63), P(None, None)),  # odd vocab and width
])
def test_partition_spec(path, shape, spec):
    assert partition_spec(path, shape, MESH) == spec


def test_fit_spec_cuts_axes_that_do_not_divide():
    assert fit_spec(P(BATCH, "tp"), (8, 4), MESH) == P(("data", "fsdp"), "tp")
    assert fit_spec(P(BATCH), (2, 5), MESH) == P("data", None)
    assert fit_spec(P(BATCH, "tp"), (3, 5), MESH) == P(None, None)
    assert fit_spec(P(None, P.UNCONSTRAINED), (3, 5), MESH) == P(None, P.UNCONSTRAINED)
    with pytest.raises(ValueError, match="more entries"):
        fit_spec(P("data", None, "tp"), (4, 4), MESH)


def test_constrain_without_mesh_is_identity():
    x = jnp.ones((4, 8))
    assert constrain(x, P(BATCH, "tp")) is x
    jaxpr = jax.make_jaxpr(lambda v: constrain(v, P(BATCH, "tp")))(x)
    assert "sharding_constraint" not in str(jaxpr)


def test_constrain_state_without_mesh_is_identity():
    from flax import nnx

    state = nnx.state(nnx.Linear(4, 8, rngs=nnx.Rngs(0)))
    assert constrain_state(state) is state


def test_make_mesh_on_one_device():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tp": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="does not use"):
        make_mesh(data=2, fsdp=1)


# --- 8 simulated devices (subprocess) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join(filter(None, (os.environ.get("XLA_FLAGS"), XLA_FLAGS)))}
    proc = subprocess.run([sys.executable, "-m", "tests.models.qwen_vl.sharded_check", *FAMILIES], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"sharded_check exited with {proc.returncode}:\n{proc.stderr[-8000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices(run):
    assert run["devices"] == 8
    assert run["mesh"] == {"data": 2, "fsdp": 2, "tp": 2}


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_places_every_parameter_by_its_rule(run, family):
    params = run["families"][family]["parameters"]
    assert params["wrong_sharding"] == []
    assert params["wrong_value"] == []
    big = params["big"]
    # embedding, lm_head, text q/gate/up/down; vision qkv (and gate/up/down in Qwen2.5-VL's SwiGLU blocks)
    expected = 2 + 4 * 2 + (2 * 1 if family == "qwen2_vl" else 4 * 4)
    assert len(big) == expected, sorted(big)
    for name, info in big.items():
        full = tuple(info["shape"])
        # split in 4 (tp x fsdp), each slice on the 2 devices of its 'data' pair; no device holds it whole
        assert info["devices"] == 8, name
        assert info["distinct_slices"] == 4, (name, info)
        assert [tuple(shape) for shape in info["shard_shapes"]] == [(full[0] // 2, full[1] // 2)], (name, info)
    assert big["model.language_model.embed_tokens.embedding"]["spec"] == str(P("tp", "fsdp"))


@pytest.mark.parametrize("family", FAMILIES)
def test_create_sharded_matches_unsharded_init(run, family):
    created = run["families"][family]["create_sharded"]
    assert created["same_names"]
    assert created["wrong_sharding"] == []
    assert created["max_abs_error"] <= 1e-6  # same seed, same values (init std 0.02)
    assert created["split"] >= created["count"] // 2  # all matrices and tp biases; norms are replicated
    # the partitioned initialiser makes vocabulary-sized arrays only in halves (tp = 2), never whole
    assert created["full_vocab_buffers"] == []
    assert created["vocab_shard_buffers"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_forward_matches(run, family, case):
    result = run["families"][family]["forward"][case]
    expected_spec = {2: P("data", None), 4: P(("data", "fsdp"), None)}[result["batch"]]
    assert result["input_spec"] == str(expected_spec)
    assert result["logits_error"] <= TOL, result["logits_error"]
    assert result["logits_max_abs"] > 0.5  # the comparison is not between near-zero logits


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_gradient_matches(run, family, case):
    result = run["families"][family]["forward"][case]
    assert result["loss_error"] <= TOL
    assert result["grad_leaves"] == run["families"][family]["parameters"]["count"]
    bad = {name: (error, scale) for name, (error, scale) in result["grad_errors"].items()
           if not error <= TOL * max(1.0, scale)}
    assert not bad, bad
    assert result["grad_shardings"] == []  # constrain_state: each gradient sharded like its parameter
    assert max(scale for _, scale in result["grad_errors"].values()) > 1e-2  # gradients are not all zero


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_on_the_mesh_matches(run, family):
    """Judge prompts on the 2 x 2 x 2 mesh: the shared-prefix program (greedy) and the plain one (seeded,
    n = 2) give the unsharded sampler's tokens; log-probs within 1e-5 (float32, sharded matmul order)."""
    result = run["families"][family]["sampler"]
    assert result["shared_greedy"]["function"] == result["shared_greedy"]["reference_function"] == "decode_shared"
    assert result["plain_sampled"]["function"] == "decode"
    assert result["shared_greedy"]["rows"] == 16 and result["plain_sampled"]["rows"] == 32
    assert result["shared_greedy"]["suffix_spec"] == result["plain_sampled"]["input_spec"] == str(
        P(("data", "fsdp"), None))  # the rows are split over the batch axes, not replicated
    for case in result.values():
        assert case["same_tokens"], case
        assert case["logprob_error"] <= 1e-5, case


def test_constrain_under_mesh(run):
    result = run["constrain"]
    assert result["identity_eager"]
    assert "sharding_constraint" not in result["jaxpr_without_mesh"]
    assert "sharding_constraint" in result["jaxpr_with_mesh"]
    assert re.search(r"spec=P\(\('data', 'fsdp'\), 'tp'\)", result["jaxpr_with_mesh"])
    assert result["spec_with_mesh"] == str(P(("data", "fsdp"), "tp"))
    assert result["spec_uneven"] == str(P("data"))  # a batch of 2: 'fsdp' dropped, not an error
    assert result["equal"]
