"""The JAX -> torch array bridge: HF names and layout equal to the checkpoint, engine-dtype casts, bounded
buckets, zero-copy DLPack views that do not outlive the call, checksums, and sharded parameters.

The sharded check runs this module as a script in a subprocess on 4 simulated CPU devices (the device count
is fixed when jax is imported; the rest of the suite runs on one device):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.test_bridge
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file

from grlhf import bridge
from grlhf.models.qwen_vl import from_pretrained
from grlhf.models.qwen_vl.hf_params import Transform, canonical_hf_key, hf_key
from tests.models.qwen_vl import tiny

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 4


@pytest.fixture(scope="module", params=[(family, tie) for family in tiny.FAMILIES for tie in (False, True)],
                ids=lambda p: f"{p[0]}{'-tied' if p[1] else ''}")
def setup(request, tmp_path_factory):
    """(HF model, checkpoint tensors as save_pretrained wrote them, grlhf model loaded from them)."""
    family, tie = request.param
    hf = tiny.hf_model(family, tie=tie)
    directory = tiny.save(hf, tmp_path_factory.mktemp(family))
    return hf, load_file(directory / "model.safetensors"), from_pretrained(directory), directory


def collect(model, **kwargs) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Every pushed tensor (cloned: the bridge's views must not be kept) and the bucket names."""
    tensors, buckets = {}, []

    def consume(bucket):
        buckets.append([name for name, _ in bucket])
        for name, tensor in bucket:
            assert name not in tensors, f"{name} sent twice"
            tensors[name] = tensor.clone()

    bridge.push_weights(model, consume, **kwargs)
    return tensors, buckets


def test_pairs_equal_the_checkpoint(setup):
    hf, files, model, _ = setup
    tensors, _ = collect(model, dtype=torch.float32)
    assert set(tensors) == set(files)
    assert ("lm_head.weight" in tensors) == (not model.config.tie_word_embeddings)  # tied: vLLM ties it itself
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), name
        assert torch.equal(tensor, files[name]), name
    state = {canonical_hf_key(key): value for key, value in hf.state_dict().items()}
    for name, tensor in tensors.items():
        assert torch.equal(tensor, state[name]), name
    assert tensors["visual.patch_embed.proj.weight"].ndim == 5  # Conv3d layout restored
    # as HF checkpoints ship them: the vision qkv fused, the LM's q/k/v separate (vLLM fuses those itself)
    assert "visual.blocks.0.attn.qkv.weight" in tensors and "model.layers.0.self_attn.k_proj.weight" in tensors
    assert not any("qkv_proj" in name or "gate_up_proj" in name for name in tensors)


def test_bridge_reflects_a_jax_update(setup):
    _, files, _, directory = setup
    model = from_pretrained(directory)  # a fresh copy: the fixture's model stays as loaded
    q = model.model.language_model.layers[0].self_attn.q_proj.kernel
    q.set_value(q.get_value() * 2)
    patch = model.model.visual.patch_embed.proj.kernel
    patch.set_value(patch.get_value() + 1)
    tensors, _ = collect(model)
    q0, q1, conv = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight", \
        "visual.patch_embed.proj.weight"
    assert torch.equal(tensors[q0], files[q0] * 2)
    assert torch.equal(tensors[conv], files[conv] + 1)
    assert torch.equal(tensors[q1], files[q1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_equals_torch_cast(setup, dtype):
    _, files, model, _ = setup
    tensors, _ = collect(model, dtype=dtype)
    assert set(tensors) == set(files)
    for name, tensor in tensors.items():
        assert tensor.dtype == dtype, name
        assert torch.equal(tensor, files[name].to(dtype)), name


def test_host_path_equals_dlpack(setup):
    _, files, model, _ = setup
    tensors, _ = collect(model, dtype=torch.bfloat16, via_host=True)
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, files[name].to(torch.bfloat16)), name


@pytest.mark.parametrize("bucket_bytes", [1, 20_000, 100_000, 10**9])
def test_buckets_are_bounded_and_cover_every_tensor_once(setup, bucket_bytes):
    _, files, model, _ = setup
    sizes = []

    def consume(bucket):
        sizes.append([(name, t.numel() * t.element_size()) for name, t in bucket])

    stats = bridge.push_weights(model, consume, dtype=torch.bfloat16, bucket_bytes=bucket_bytes)
    names = [name for bucket in sizes for name, _ in bucket]
    assert sorted(names) == sorted(files) and len(names) == len(set(names))
    for bucket in sizes:
        assert bucket and (len(bucket) == 1 or sum(n for _, n in bucket) <= bucket_bytes), bucket
    total = sum(files[name].numel() * 2 for name in files)
    assert stats == bridge.PushStats(tensors=len(files), bytes=total, buckets=len(sizes))
    if bucket_bytes == 1:
        assert len(sizes) == len(files)
    if bucket_bytes == 10**9:
        assert len(sizes) == 1
    if bucket_bytes == 20_000:
        assert 1 < len(sizes) < len(files)


def test_plan_buckets():
    sizes = [("a", 4), ("b", 4), ("c", 10), ("d", 1), ("e", 2), ("f", 3)]
    assert bridge.plan_buckets(sizes, 8) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert bridge.plan_buckets(sizes, 1) == [[name] for name, _ in sizes]
    assert bridge.plan_buckets([], 8) == []
    with pytest.raises(ValueError, match="positive"):
        bridge.plan_buckets(sizes, 0)


def test_zero_copy_views_are_released(setup):
    _, _, _, directory = setup
    model = from_pretrained(directory)
    lm = model.model.language_model
    norm, embed, q = lm.norm.scale, lm.embed_tokens.embedding, lm.layers[0].self_attn.q_proj.kernel
    kept = []

    def consume(bucket):
        kept.append(bucket)
        tensors = dict(bucket)
        assert tensors["model.norm.weight"].data_ptr() == norm.get_value().unsafe_buffer_pointer()
        assert tensors["model.embed_tokens.weight"].data_ptr() == embed.get_value().unsafe_buffer_pointer()
        assert tensors["model.layers.0.self_attn.q_proj.weight"].data_ptr() != q.get_value().unsafe_buffer_pointer()

    bridge.push_weights(model, consume, dtype=torch.float32, bucket_bytes=10**9)
    assert kept == [[]]  # the bridge emptied the list it handed over

    def cast_consume(bucket):
        assert dict(bucket)["model.norm.weight"].data_ptr() != norm.get_value().unsafe_buffer_pointer()

    bridge.push_weights(model, cast_consume, dtype=torch.bfloat16)  # a cast is a new buffer

    # no view outlives the call: a donating step may take the norm's buffer afterwards
    gc.collect()
    value = norm.get_value()
    jax.jit(lambda x: x * 2, donate_argnums=0)(value)
    assert value.is_deleted()


def test_checksums_match_and_verify(setup):
    _, files, model, _ = setup
    for dtype in (torch.float32, torch.bfloat16):
        expected = bridge.checksums(model, dtype)
        tensors, _ = collect(model, dtype=dtype)
        received = {name: bridge.tensor_checksum(tensor) for name, tensor in tensors.items()}
        assert set(expected) == set(files)
        for name in expected:
            assert abs(expected[name] - received[name]) <= 1e-5 * expected[name], name
        bridge.verify_checksums(expected, received)
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][0, 0] += 1.0
    received[name] = bridge.tensor_checksum(tensors[name])
    with pytest.raises(ValueError, match=r"1 of \d+ tensor\(s\) differ: model\.layers\.1\.mlp\.down_proj\.weight"):
        bridge.verify_checksums(expected, received)
    with pytest.raises(ValueError, match="missing: visual.merger.ln_q.weight"):
        bridge.verify_checksums(expected, {k: v for k, v in expected.items() if k != "visual.merger.ln_q.weight"})
    with pytest.raises(ValueError, match="unexpected: extra"):
        bridge.verify_checksums(expected, {**expected, "extra": 1.0})
    with pytest.raises(ValueError, match="differ"):
        bridge.verify_checksums({"a": 1.0}, {"a": float("nan")})


def test_one_compiled_call_per_bucket_and_no_recompilation(setup, monkeypatch):
    """Each bucket's casts and transposes are one call of the jitted ``_to_hf_bucket`` (none for a bucket of
    untouched tensors), in ``push_weights`` and the lazy ``export`` alike; a second push of the same model
    compiles nothing."""
    _, files, model, _ = setup
    jitted, calls = bridge._to_hf_bucket, []

    def counting(arrays, **kwargs):
        calls.append(len(arrays))
        return jitted(arrays, **kwargs)

    monkeypatch.setattr(bridge, "_to_hf_bucket", counting)
    keys = [hf_key(path) for path, _ in bridge.model_params(model)]
    names = [name for name, _ in keys]
    transformed = sum(transform is not Transform.NONE for _, transform in keys)
    for bucket_bytes in (20_000, 100_000, 10**9):
        for dtype in (torch.bfloat16, torch.float32):
            sizes = []
            stats = bridge.push_weights(model, lambda bucket: sizes.append(len(bucket)), dtype=dtype,
                                        bucket_bytes=bucket_bytes)
            compiled = jitted._cache_size()  # programs compiled so far (jax's jitted-function cache)
            for _ in range(2):  # the second push of the same model reuses the compiled bucket functions
                calls.clear()
                again = bridge.push_weights(model, lambda bucket: None, dtype=dtype, bucket_bytes=bucket_bytes)
                assert again == stats and jitted._cache_size() == compiled
                if dtype == torch.bfloat16:  # every tensor is cast: each bucket is exactly one call
                    assert calls == sizes and len(calls) == stats.buckets, (calls, sizes)
                else:  # float32 as stored: only the transposed kernels go through the call, one per bucket
                    assert len(calls) <= stats.buckets and sum(calls) == transformed, (calls, sizes)
            calls.clear()
            pairs = list(bridge.export(bridge.model_params(model), model.config, dtype=dtype,
                                       bucket_bytes=bucket_bytes))
            assert jitted._cache_size() == compiled and [name for name, _ in pairs] == names
            if dtype == torch.bfloat16:
                assert calls == sizes
            for name, tensor in pairs:
                assert torch.equal(tensor, files[name].to(dtype)), name
            del pairs
    assert len(names) == len(files) and transformed > 10


def test_unknown_dtype_is_an_error(setup):
    with pytest.raises(ValueError, match="unsupported engine dtype torch.int8"):
        bridge.push_weights(setup[2], lambda bucket: None, dtype=torch.int8)


# --- 4 simulated devices (subprocess) --------------------------------------------------------------------


def sharded_check() -> dict:
    """Both families loaded onto a (data 1, fsdp 2, tp 2) mesh push the same pairs and checksums as unsharded."""
    from grlhf.models.qwen_vl.sharding import make_mesh

    mesh = make_mesh(data=1, fsdp=2, tp=2)
    out = {"devices": jax.device_count(), "families": {}}
    for family in tiny.FAMILIES:
        with tempfile.TemporaryDirectory() as tmp:
            directory = tiny.save(tiny.hf_model(family), Path(tmp))
            plain, sharded = from_pretrained(directory), from_pretrained(directory, mesh=mesh)
        leaves = [var.get_value() for _, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param))]
        result = {"split": sum(not leaf.is_fully_replicated for leaf in leaves), "mismatch": [], "checksum_error": 0.0}
        for dtype in (torch.float32, torch.bfloat16):
            want, _ = collect(plain, dtype=dtype)
            got, buckets = collect(sharded, dtype=dtype, bucket_bytes=50_000)
            result["mismatch"] += [f"{name} {dtype}" for name in want if name not in got
                                   or got[name].dtype != dtype or not torch.equal(got[name], want[name])]
            result["same_names"] = sorted(got) == sorted(want)
            expected, plain_sums = bridge.checksums(sharded, dtype), bridge.checksums(plain, dtype)
            received = {name: bridge.tensor_checksum(tensor) for name, tensor in got.items()}
            bridge.verify_checksums(expected, received)
            result["checksum_error"] = max([result["checksum_error"]] + [
                abs(expected[name] - plain_sums[name]) / max(plain_sums[name], 1e-30) for name in expected])
        out["families"][family] = result
    return out


def test_sharded_params_give_identical_pairs():
    flags = f"--xla_force_host_platform_device_count={DEVICES}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join(filter(None, (os.environ.get("XLA_FLAGS"), flags)))}
    proc = subprocess.run([sys.executable, "-m", "tests.test_bridge"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"sharded check exited with {proc.returncode}:\n{proc.stderr[-8000:]}")
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["devices"] == DEVICES
    for family, result in run["families"].items():
        assert result["split"] > 10, family  # the matrices really are sharded
        assert result["same_names"] and result["mismatch"] == [], (family, result["mismatch"])
        assert result["checksum_error"] <= 1e-5, family


if __name__ == "__main__":
    print(json.dumps(sharded_check()))
