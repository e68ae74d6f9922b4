"""``trainer.dry_run``: the abstract model, the sharding plan, the memory estimate and the data report,
without weights, for the paper's real model configs (configs/models/*/config.json) and the tiny default."""

import json
import math
import re

import pytest

from grlhf.config import CONFIG_DIR, ConfigError, check_mesh, load_config
from grlhf.models.qwen_vl.config import QwenVLConfig
from grlhf.dry_run import abstract_params, dry_run, param_counts

GRM_3B = str(CONFIG_DIR / "qwen2.5-vl-3b-grm.yaml")
POLICY_7B = str(CONFIG_DIR / "qwen2-vl-7b-policy.yaml")
GIB = 1024**3

# parameter counts as the hub model cards state them
PUBLISHED = {"qwen2.5-vl-3b-instruct": 3.75e9, "qwen2.5-vl-7b-instruct": 8.29e9, "qwen2-vl-7b-instruct": 8.29e9,
             "qwen2-vl-2b-instruct": 2.21e9}


def formula_param_count(hf: dict) -> int:
    """Parameters of a Qwen2-VL / Qwen2.5-VL checkpoint from its flat hub config.json, by hand (independent of
    the model code): decoder with q/k/v biases, SwiGLU MLP, RMSNorms; the vision tower; the patch merger."""
    h, inter, vocab, layers = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"], hf["num_hidden_layers"]
    hd = h // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * hd, hf["num_key_value_heads"] * hd
    layer = 2 * h + (h * q + q) + 2 * (h * kv + kv) + q * h + 3 * h * inter
    text = vocab * h + layers * layer + h + (0 if hf["tie_word_embeddings"] else h * vocab)
    v = hf["vision_config"]
    if hf["model_type"] == "qwen2_vl":
        w, vi, out, norm = v["embed_dim"], v["embed_dim"] * v["mlp_ratio"], v["hidden_size"], 2  # LayerNorm
        mlp = (w * vi + vi) + (vi * w + w)  # fc1, fc2
    else:
        w, vi, out, norm = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"], 1  # RMSNorm
        mlp = 2 * (w * vi + vi) + (vi * w + w)  # gate, up, down (with biases)
    block = 2 * norm * w + (w * 3 * w + 3 * w) + (w * w + w) + mlp
    patch = v.get("in_chans", 3) * v["temporal_patch_size"] * v["patch_size"] ** 2 * w
    merged = w * v["spatial_merge_size"] ** 2
    merger = norm * w + (merged * merged + merged) + (merged * out + out)
    return text + patch + v["depth"] * block + merger


def reported_params(report: str) -> int:
    return int(re.search(r"^  total: [\d.]+[BM] \(([\d,]+)\)$", report, re.M).group(1).replace(",", ""))


def memory_totals(report: str) -> dict[str, float]:
    """``{phase: bytes}`` from the report's ``memory per device, <phase>`` sections."""
    totals = {}
    for phase, value, unit in re.findall(r"memory per device, ([\w ]+) \(estimate\):\n(?:  .*\n)*?  total: ([\d.]+) "
                                         r"(GiB|MiB)", report):
        totals[phase] = float(value) * (GIB if unit == "GiB" else 2**20)
    return totals


@pytest.fixture(scope="module")
def grm_3b_report() -> str:
    return dry_run(load_config([GRM_3B, "trainer.dry_run=true"]))


def test_3b_grm_parameter_count(grm_3b_report):
    hf = json.loads((CONFIG_DIR / "models" / "qwen2.5-vl-3b-instruct" / "config.json").read_text())
    expected = formula_param_count(hf)
    assert expected == pytest.approx(3.75e9, rel=0.01)
    assert reported_params(grm_3b_report) == pytest.approx(expected, rel=0.01)
    assert "vision tower: 0.669B" in grm_3b_report and "embedding: 0.311B" in grm_3b_report
    assert "lm_head" not in grm_3b_report  # tied embeddings


def test_3b_grm_report_sections(grm_3b_report):
    assert "8 device(s): data=1, fsdp=8, tp=1" in grm_3b_report
    assert "model.language_model.embed_tokens.embedding: (151936, 2048) float32 P('tp', 'fsdp') " \
           "-> per device (151936, 256)" in grm_3b_report
    totals = memory_totals(grm_3b_report)
    assert set(totals) == {"training step", "rollout"}
    assert 10 * GIB < totals["training step"] < 80 * GIB
    assert "reference model" in grm_3b_report  # kl_coef 0.02 in an RL stage
    # the placeholder data files are absent: reported, not fatal
    assert "train_files: data/align-anything/text-image-to-text/train: not found (dry run)" in grm_3b_report
    assert "360 pairs -> 2880 sequences of <= 14848 tokens; 3 update(s) of 960" in grm_3b_report


def test_3b_grm_rollout_names_the_max_rows_that_fits(grm_3b_report):
    """The whole rollout batch at once (360 sequences x 14848 slots per device) is over 80 GiB: the report marks
    it and names the rollout.max_rows that brings it under, which rollout_rows_that_fit (auto) also picks."""
    from grlhf.dry_run import model_dir, rollout_rows_that_fit

    assert memory_totals(grm_3b_report)["rollout"] > 80 * GIB
    assert re.search(r"^  total: [\d.]+ GiB of 80 GiB  \*\* OVER \*\*$", grm_3b_report, re.M)
    rows = int(re.search(r"set rollout\.max_rows=(\d+) ", grm_3b_report).group(1))
    assert rows % 8 == 0 and 8 <= rows < 360
    cfg = load_config([GRM_3B, "trainer.dry_run=true", f"rollout.max_rows={rows}"])
    chunked = dry_run(cfg)
    assert memory_totals(chunked)["rollout"] < 80 * GIB and "OVER" not in chunked and "WARNING" not in chunked
    assert f"rows: {rows} of the batch's 360 per device at once, {-(-360 // rows)} chunk(s)" in chunked
    config = QwenVLConfig.from_pretrained(model_dir(cfg))
    assert rollout_rows_that_fit(cfg, config, 80 * GIB, (1, 8, 1)) == rows
    assert rollout_rows_that_fit(cfg, config, None, dict(data=1, fsdp=8, tp=1)) == 360  # memory unknown: all
    more = dry_run(load_config([GRM_3B, "trainer.dry_run=true", f"rollout.max_rows={rows + 8}"]))
    assert memory_totals(more)["rollout"] > memory_totals(chunked)["rollout"]


def test_auto_max_rows_is_every_row_for_the_default():
    """rollout.max_rows=0 on CPU (no device memory reported) or a device the batch fits: the whole rollout batch
    per call, so the sampler decodes it in one call as without chunking."""
    from grlhf.dry_run import device_memory_bytes, model_dir, rollout_rows_that_fit
    from grlhf.trainer.roles import rollout_max_rows

    cfg = load_config(["trainer.dry_run=true"])
    assert cfg.rollout.max_rows == 0
    config = QwenVLConfig.from_pretrained(model_dir(cfg))
    every = cfg.trainer.batch_size * cfg.rollout.n
    assert device_memory_bytes() is None  # CPU
    assert rollout_rows_that_fit(cfg, config, None, (1, 1, 1)) == every
    assert rollout_rows_that_fit(cfg, config, 80 * GIB, (1, 1, 1)) == every

    class Model:
        pass

    model = Model()
    model.config = config
    assert rollout_max_rows(cfg, model) == every
    assert rollout_max_rows(load_config(["trainer.dry_run=true", "rollout.max_rows=4"]), model) == 4


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_configs_load_with_published_counts(name):
    config = QwenVLConfig.from_pretrained(CONFIG_DIR / "models" / name)
    total = param_counts(dict(abstract_params(config)))["total"]
    hf = json.loads((CONFIG_DIR / "models" / name / "config.json").read_text())
    assert total == formula_param_count(hf)
    assert total == pytest.approx(PUBLISHED[name], rel=0.01)


def test_memory_shrinks_as_fsdp_grows():
    totals = {}
    for fsdp in (1, 8):
        report = dry_run(load_config([GRM_3B, "trainer.dry_run=true", f"trainer.mesh.fsdp={fsdp}"]))
        assert f"{fsdp} device(s): data=1, fsdp={fsdp}, tp=1" in report
        totals[fsdp] = memory_totals(report)["training step"]
    assert totals[8] < totals[1] / 2


def test_7b_policy_report():
    report = dry_run(load_config([POLICY_7B, "trainer.dry_run=true"]))
    assert reported_params(report) == pytest.approx(8.29e9, rel=0.01)
    assert "lm_head: 0.545B" in report  # untied
    assert "360 prompts -> 1800 sequences of <= 4608 tokens; 3 update(s) of 600; 45 micro-batches of 40" in report
    assert memory_totals(report)["training step"] < 80 * GIB


def test_tiny_default_dry_run():
    from safetensors import safe_open

    from grlhf.dry_run import model_dir

    cfg = load_config(["trainer.stage=grm", "trainer.dry_run=true"])  # the default's stage 1 (pipeline.grm)
    report = dry_run(cfg)
    with safe_open(str(model_dir(cfg) / "model.safetensors"), "np") as f:  # the real weights (tied: no lm_head)
        expected = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    assert reported_params(report) == expected
    assert "1 device(s): data=1, fsdp=1, tp=1" in report
    assert cfg.trainer.steps > 0 and "source: synthetic" in report and re.search(rf"steps: {cfg.trainer.steps}\b", report)
    assert set(memory_totals(report)) == {"training step", "rollout"}
    assert f"before it: {cfg.sft.steps} SFT warm-start steps" in report


def test_dry_run_names_the_direct_answers_phase():
    report = dry_run(load_config(["trainer.stage=grm", "trainer.dry_run=true", "sft.answer_steps=7"]))
    assert "first: 7 steps of 16 questions answered directly (sft.answer_steps)" in report


def test_bad_mesh_reports_check_mesh_error():
    cfg = load_config([GRM_3B, "trainer.dry_run=true", "trainer.mesh.fsdp=3"])
    with pytest.raises(ConfigError) as error:
        check_mesh(cfg, 8)
    report = dry_run(cfg, device_count=8)
    assert str(error.value) in report
    assert "memory per device" not in report
    assert "data:" in report  # the rest of the report still comes


def test_data_files_found(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rows = 20
    table = pa.table({"question": ["q"] * rows, "image": [b""] * rows, "response_1": ["a"] * rows,
                      "response_2": ["b"] * rows, "overall_response": [1] * rows})
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-0.parquet")
    cfg = load_config(["trainer.dry_run=true", "data.source=files", f"data.train_files={tmp_path / 'train'}",
                       "trainer.steps=0", "trainer.epochs=2"])
    report = dry_run(cfg)
    assert f"train_files: {tmp_path / 'train'}: 1 file(s), {rows} rows" in report
    assert "eval_files: not set" in report
    assert "steps: 4 (2 epochs of 2)" in report  # 20 pairs // batch 8 = 2 steps per epoch


# ---- the estimate against what JAX saves and what XLA allocates ------------------------------------------

SMALL = ["trainer.stage=policy", "reward.source=oracle", "data.max_prompt_length=96", "rollout.max_tokens=32",
         "algorithm.micro_batch_size=8", "rollout.n=8", "trainer.batch_size=1", "algorithm.kl_coef=0.0"]


def _small_step(remat: str, layers: int, impl: str = "xla"):
    """The tiny model cut to ``layers`` decoder layers (attention ``impl``), one micro-batch of 8 rows x 128
    tokens whose last 32 targets are the response, and the pure loss of the policy's train step over its
    parameters."""
    import dataclasses

    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from grlhf.dry_run import model_dir
    from grlhf.models.qwen_vl.model import QwenVLForConditionalGeneration
    from grlhf.trainer.step import LossConfig, TrainBatch, loss_sums, response_positions

    cfg = load_config(SMALL + [f"model.remat={remat}", f"model.attention_impl={impl}"])
    base = QwenVLConfig.from_pretrained(model_dir(cfg))
    config = dataclasses.replace(base, text=dataclasses.replace(base.text, num_hidden_layers=layers))
    model = QwenVLForConditionalGeneration(config, rngs=nnx.Rngs(0), remat=remat, attention_impl=impl)
    rows, seq = 8, 128
    inputs = model.prepare(input_ids=np.random.default_rng(0).integers(20, 100, (rows, seq)),
                           attention_mask=np.ones((rows, seq), np.int64))
    mask = np.zeros((rows, seq - 1), np.float32)
    mask[:, -32:] = 1.0
    batch = TrainBatch(inputs, mask, np.ones(rows, np.float32), -mask, None, jnp.asarray(response_positions(mask)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = LossConfig(kind="ppo", head_chunk=cfg.model.head_chunk)
    return cfg, config, params, lambda p, b=batch: loss_sums(nnx.merge(graphdef, p, rest), b, loss)[0], batch


def _saved_bytes(remat: str, layers: int, impl: str = "xla") -> int:
    """Bytes of the distinct arrays JAX keeps from the forward pass for the backward (the VJP's residuals),
    parameters excluded."""
    import jax

    _, _, params, loss, _ = _small_step(remat, layers, impl)
    residuals = {id(a): a for a in jax.tree.leaves(jax.vjp(loss, params)[1])}
    param_ids = {id(a) for a in jax.tree.leaves(params)}
    return sum(a.nbytes for key, a in residuals.items() if key not in param_ids)


@pytest.mark.parametrize("remat, impl", [("none", "xla"), ("none", "xla_autodiff"), ("full", "xla"), ("dots", "xla"),
                                         ("dots_no_batch", "xla")])
def test_what_a_layer_keeps_matches_the_residuals_jax_saves(remat, impl):
    """Per decoder layer (4 layers minus 2, halved), the residuals JAX saves for the backward pass under each
    model.remat policy are the dry run's ``layer_kept`` within 25% (measured: none 10.9 vs 10.0 MiB with the
    written-out backward passes, 19.4 vs 16.0 with xla_autodiff; full 0.5 vs 0.5, dots 6.5 vs 7.0, dots_no_batch
    4.0 vs 4.5, either way). Backend-independent: XLA's CPU compiler does not realise remat's savings in its
    buffer assignment (the next test), GPU's does."""
    from grlhf.dry_run import layer_kept

    cfg, config, *_ = _small_step(remat, 2, impl)
    per_layer = (_saved_bytes(remat, 4, impl) - _saved_bytes(remat, 2, impl)) / 2
    estimate = layer_kept(cfg, config.text, 1, 8, 128, remat)
    assert estimate == pytest.approx(per_layer, rel=0.25), (remat, per_layer / 2**20, estimate / 2**20)


def test_the_step_estimate_matches_xlas_memory_analysis():
    """The dry run's per-device total for the training step (remat none) against XLA's own accounting of the
    compiled gradient program (arguments + outputs + temporaries) plus what stays resident beside it (AdamW's
    two moments and the gradient accumulator): within 25% (measured: 45.0 MiB estimated, 45.7 MiB by XLA on CPU)."""
    import jax

    from grlhf.dry_run import abstract_mesh, memory_estimate, sharding_plan

    cfg, config, params, loss, batch = _small_step("none", 2)
    mesh = abstract_mesh((1, 1, 1))
    plan = sharding_plan(dict(abstract_params(config, cfg.model.param_dtype)), mesh)
    estimate = sum(memory_estimate(cfg, config, plan, mesh).values())
    compiled = jax.jit(jax.grad(loss)).lower(params, batch).compile().memory_analysis()
    param_bytes = sum(a.nbytes for a in jax.tree.leaves(params))
    measured = (compiled.argument_size_in_bytes + compiled.output_size_in_bytes + compiled.temp_size_in_bytes
                - compiled.alias_size_in_bytes + 3 * param_bytes)
    assert estimate == pytest.approx(measured, rel=0.25), (estimate / 2**20, measured / 2**20)


def test_the_report_gives_the_step_under_every_remat_policy():
    report = dry_run(load_config([GRM_3B, "trainer.dry_run=true"]))
    line = next(x for x in report.splitlines() if x.startswith("  by model.remat: "))
    totals = dict(re.findall(r"(\w+) ([\d.]+) GiB", line))
    assert set(totals) == {"none", "full", "dots", "dots_no_batch"} and "full" in line.split("(this run)")[0][-25:]
    assert float(totals["full"]) < float(totals["dots_no_batch"]) <= float(totals["dots"]) < float(totals["none"])
    assert "fused LM head (1 x 2048 response positions, 8192 vocabulary columns at a time)" in report
