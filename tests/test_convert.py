"""``python -m grlhf.convert``: HF -> orbax -> HF and --info."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from grlhf.convert import _size, main
from tests.models.qwen_vl import tiny


def test_hf_orbax_hf_round_trip_and_info(tmp_path, capsys):
    hf_dir = tiny.save(tiny.hf_model("qwen2_5_vl"), tmp_path / "hf")
    assert main(["to-orbax", str(hf_dir), str(tmp_path / "orbax")]) == 0
    assert main(["to-hf", str(tmp_path / "orbax"), str(tmp_path / "back"), "--dtype", "bfloat16",
                 "--max-shard-size", "200KB"]) == 0
    back = {}
    for file in (tmp_path / "back").glob("model-*.safetensors"):
        back.update(load_file(file))
    original = load_file(hf_dir / "model.safetensors")
    assert set(back) == set(original)
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor.to(torch.bfloat16)), key
    capsys.readouterr()
    assert main(["--info", str(tmp_path / "back")]) == 0
    info = capsys.readouterr().out
    assert "Qwen2_5_VLForConditionalGeneration" in info and "dtypes: bfloat16" in info
    total = sum(t.numel() for t in original.values())
    assert f"parameters: {total:,}" in info
    assert "model.language_model.layers.N.self_attn.q_proj.kernel" in info and "(64, 64)" in info


def test_sizes_and_usage_errors():
    assert _size("5GB") == 5 * 2**30 and _size("200KB") == 200 * 2**10 and _size("1000") == 1000
    with pytest.raises(Exception, match="cannot read the size"):
        _size("lots")
    result = subprocess.run([sys.executable, "-m", "grlhf.convert", "to-hf"], capture_output=True, text=True)
    assert result.returncode == 2 and "SOURCE and TARGET" in result.stderr


def test_a_missing_directory_is_one_message_and_exit_2(tmp_path, capsys):
    assert main(["--info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grlhf.convert: ") and "nowhere" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        main(["--info", str(tmp_path / "nowhere"), "--debug"])
