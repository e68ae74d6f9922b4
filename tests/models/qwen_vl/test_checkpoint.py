"""HF safetensors <-> grlhf: round trips, bf16, sharded indexes, tied heads, clear errors; orbax."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from grlhf.models.qwen_vl import QwenVLConfig, from_pretrained, load_orbax, save_orbax, save_pretrained
from grlhf.errors import UserError
from grlhf.models.qwen_vl.checkpoint import WeightsMismatch
from tests.models.qwen_vl import tiny


@pytest.fixture(scope="module", params=tiny.FAMILIES)
def hf_dir(request, tmp_path_factory):
    hf = tiny.hf_model(request.param)
    return request.param, hf, tiny.save(hf, tmp_path_factory.mktemp(request.param))


def _file_tensors(directory):
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_round_trip_gives_identical_tensors(hf_dir, tmp_path):
    family, hf, directory = hf_dir
    out = save_pretrained(from_pretrained(directory), tmp_path / "out")
    original, written = _file_tensors(directory), _file_tensors(out)
    assert set(original) == set(written)
    for key in original:
        assert torch.equal(original[key], written[key]), key
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    assert config["architectures"] == [QwenVLConfig.from_hf(tiny.hf_config(family)).architecture]


def test_export_loads_in_transformers_with_identical_logits(hf_dir, tmp_path):
    family, hf, directory = hf_dir
    out = save_pretrained(from_pretrained(directory), tmp_path / "out", max_shard_size=150_000)
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("model-*.safetensors"))) > 1
    cls = type(hf)
    reloaded, info = cls.from_pretrained(out, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = tiny.torch_inputs(tiny.make_inputs("one_image"), family)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(**inputs).logits, hf(**inputs).logits)


def test_sharded_and_bfloat16_checkpoints_load(hf_dir, tmp_path):
    family, _, _ = hf_dir
    hf = tiny.hf_model(family)
    directory = tiny.save(hf.to(torch.bfloat16), tmp_path / "bf16", max_shard_size="100KB")
    assert (directory / "model.safetensors.index.json").exists()
    model = from_pretrained(directory)
    leaf = model.model.language_model.embed_tokens.embedding.get_value()
    assert leaf.dtype == jnp.bfloat16  # the stored dtype by default
    expected = hf.state_dict()["model.language_model.embed_tokens.weight"].float().numpy()
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), expected)
    as_float = from_pretrained(directory, param_dtype=jnp.float32)
    assert as_float.model.language_model.embed_tokens.embedding.get_value().dtype == jnp.float32
    out = save_pretrained(model, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in _file_tensors(out).values())


def test_in_memory_key_layout_loads(hf_dir, tmp_path):
    family, hf, directory = hf_dir
    target = tmp_path / "new_layout"
    target.mkdir()
    (target / "config.json").write_text((directory / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, target / "model.safetensors")
    assert any(k.startswith("model.language_model.") for k in load_file(target / "model.safetensors"))
    inputs = tiny.make_inputs("text")
    np.testing.assert_array_equal(np.asarray(from_pretrained(target)(**inputs)),
                                  np.asarray(from_pretrained(directory)(**inputs)))


def test_missing_tensors_are_listed(hf_dir, tmp_path):
    family, hf, directory = hf_dir
    tensors = _file_tensors(directory)
    del tensors["model.layers.1.mlp.up_proj.weight"], tensors["visual.blocks.0.attn.qkv.bias"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing 2 tensor\(s\): model.layers.1.mlp.up_proj.weight, "
                                         r"visual.blocks.0.attn.qkv.bias"):
        from_pretrained(broken)


def test_unexpected_tensors_are_listed(hf_dir, tmp_path):
    family, hf, directory = hf_dir
    tensors = _file_tensors(directory)
    tensors["model.layers.7.mlp.up_proj.weight"] = torch.zeros(2)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "config.json").write_text((directory / "config.json").read_text())
    save_file(tensors, extra / "model.safetensors")
    with pytest.raises(ValueError, match="does not use: model.layers.7.mlp.up_proj.weight"):
        from_pretrained(extra)


def test_a_wrong_shape_is_stated_in_the_checkpoints_hf_layout(hf_dir, tmp_path):
    family, hf, directory = hf_dir
    tensors = _file_tensors(directory)
    out_features, in_features = tensors["model.layers.0.mlp.up_proj.weight"].shape  # torch Linear: (out, in)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(out_features + 1, in_features)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text((directory / "config.json").read_text())
    save_file(tensors, wrong / "model.safetensors")
    with pytest.raises(WeightsMismatch, match=rf"model.layers.0.mlp.up_proj.weight has shape "
                                              rf"\({out_features + 1}, {in_features}\), but its config.json makes "
                                              rf"it \({out_features}, {in_features}\)") as error:
        from_pretrained(wrong)
    assert isinstance(error.value, UserError)  # the CLI prints it without a traceback


def test_orbax_round_trip(hf_dir, tmp_path):
    family, hf, directory = hf_dir
    model = from_pretrained(directory)
    restored = load_orbax(save_orbax(model, tmp_path / "orbax"))
    inputs = tiny.make_inputs("one_image")
    np.testing.assert_array_equal(np.asarray(restored(**inputs)), np.asarray(model(**inputs)))


def test_flat_hub_config_layout(tmp_path):
    """The hub's 4.x-style config: text keys at the top level and rope_scaling with mrope."""
    nested = tiny.hf_config("qwen2_5_vl").to_dict()
    text = nested.pop("text_config")
    flat = {**nested, **{k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                "num_attention_heads", "num_key_value_heads", "rms_norm_eps")}}
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
    flat["rope_theta"] = 1e6
    (tmp_path / "config.json").write_text(json.dumps(flat))
    config = QwenVLConfig.from_pretrained(tmp_path)
    assert config.text.mrope_section == (2, 3, 3) and config.text.rope_theta == 1e6
    assert config.text.hidden_size == 64 and config.vision.window_size == 56


def _write_config(tmp_path, **changes):
    config = tiny.hf_config("qwen2_vl").to_dict()
    for key, value in changes.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "llava"}, "unsupported model_type 'llava'"),
    ({"text_config.use_sliding_window": True, "text_config.sliding_window": 64}, "use_sliding_window"),
    ({"text_config.rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0,
                                      "mrope_section": [2, 3, 3]}}, "unsupported rope_type 'yarn'"),
])
def test_unsupported_configs_are_named(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        QwenVLConfig.from_pretrained(_write_config(tmp_path, **changes))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path)
    _write_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(tmp_path)
