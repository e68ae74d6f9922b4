"""bench/gpu_step.py: its configuration and FLOP rules, and a CPU smoke run of every part in a process where
omegaconf, vLLM and tensorboardX cannot be imported (the GPU image has none of them)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_step.py"
TINY = ["--layers", "1", "--vision-depth", "2", "--seq", "128", "--image", "56", "--batch", "2", "--loss-tokens", "32",
        "--dtype", "float32", "--hidden", "128", "--heads", "4", "--kv-heads", "2", "--intermediate", "256",
        "--vocab", "1024", "--vision-hidden", "64", "--vision-heads", "2", "--vision-intermediate", "128",
        "--prompts", "2", "--n", "2", "--max-tokens", "4", "--prompt-len", "32", "--repeats", "1", "--pause", "0"]
# what the GPU image lacks: importing any of them in the smoke run fails it
RUN = """
import importlib.util, sys
for name in ("omegaconf", "vllm", "tensorboardX"):
    sys.modules[name] = None
spec = importlib.util.spec_from_file_location("gpu_step", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def gpu_step():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cut_config_keeps_windows_and_full_blocks(gpu_step):
    assert gpu_step.full_attention_blocks(32) == [7, 15, 23, 31]  # the 3B's own
    assert gpu_step.full_attention_blocks(8) == [3, 7]  # issue 16's cut
    assert gpu_step.full_attention_blocks(2) == [1]
    assert gpu_step.mrope_section(128) == [16, 24, 24]
    with pytest.raises(ValueError, match="multiple of 16"):
        gpu_step.mrope_section(40)
    with pytest.raises(ValueError, match="multiple of 28"):
        gpu_step.image_grid(100)


def test_default_configuration_is_issue_16s(gpu_step):
    """12 layers / 8 blocks: 1.43 B parameters, 2.86 GB in bf16, and the FLOPs behind issue 16's figures
    (transformers: 0.39 s at 349 TFLOP/s, i.e. 136 TFLOP a step)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    args = gpu_step.parse_args([])
    config = gpu_step.hf_config(args)
    assert config.vision_config.fullatt_block_indexes == [3, 7]
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    counts = gpu_step.matmul_params(model.named_parameters())
    assert round(counts["total"] / 1e9, 2) == 1.43 and round(counts["bytes"] / 1e9, 2) == 2.86
    text = config.text_config
    flops = gpu_step.step_flops(counts, batch=8, seq=2048, layers=12, heads=text.num_attention_heads,
                                head_dim=text.hidden_size // text.num_attention_heads, hidden=text.hidden_size,
                                vocab=text.vocab_size, patches=8 * 1024)
    assert flops["total"] == pytest.approx(349e12 * 0.39, rel=0.01)
    assert flops["total"] == flops["dense"] + flops["attention"] + flops["vision"]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_cpu_smoke_run_reports_every_figure(tmp_path):
    out = tmp_path / "gpu_step.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RUN, str(SCRIPT), *TINY, "--json", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== ratios" in done.stdout
    report = json.loads(out.read_text())

    step = report["step"]
    for side in ("grlhf", "transformers"):
        assert all(_positive(step[side][key]) for key in ("median_s", "tokens_per_s", "tflops", "mfu"))
    assert _positive(step["ratio_tokens_per_s"])
    assert step["loss"]["rel_diff"] < 1e-5  # float32, the same weights and tokens
    assert _positive(step["flops"]["total"]) and _positive(step["memory"]["xla"]["temp"])
    assert step["memory"]["torch_peak_bytes"] is None  # CPU: reported as n/a, not invented

    sample = report["sample"]
    assert sample["tokens"] == 2 * 2 * 4 and _positive(sample["ratio_tokens_per_s"])
    assert _positive(sample["hbm_floor_s"]) and sample["weight_bytes"] == step["params"]["bytes"]
    for side in ("grlhf", "transformers"):
        assert _positive(sample[side]["tokens_per_s"])
        assert math.isfinite(sample[side]["decode_step_vs_floor"])  # a difference of two timings: sign is noise here

    ratios = {row["label"]: row["value"] for row in report["ratios"]}
    assert len(ratios) == 5  # CPU: no torch peak, so no memory ratios
    assert all(math.isfinite(value) for value in ratios.values())

    bridge = report["bridge"]
    assert bridge["bytes"] == step["params"]["bytes"]  # every parameter, float32 as stored
    assert _positive(bridge["ratio_export_vs_copy"]) and _positive(bridge["ratio_export_vs_jax_copy"])


def test_a_failing_part_is_recorded_and_the_others_still_run(gpu_step, tmp_path, monkeypatch):
    """An out-of-memory step on the GPU must not cost the sampling and bridge figures of the same run."""
    def out_of_memory(*args):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

    monkeypatch.setattr(gpu_step, "part_step", out_of_memory)
    out = tmp_path / "gpu_step.json"
    with pytest.raises(SystemExit, match="failed: step"):
        gpu_step.main([*TINY, "--parts", "step,bridge", "--json", str(out)])
    report = json.loads(out.read_text())
    assert "RESOURCE_EXHAUSTED" in report["errors"]["step"] and "step" not in report
    assert _positive(report["bridge"]["ratio_export_vs_copy"])
    assert [row["label"] for row in report["ratios"]] == ["bridge export / device copy of the same bytes"]
