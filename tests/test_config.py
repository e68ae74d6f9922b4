"""The run configuration: YAML + key=value merging, types, unknown keys, impossible combinations."""

from pathlib import Path

import pytest

from grlhf.config import Config, ConfigError, DEFAULT_CONFIG, all_keys, check_mesh, load_config, to_yaml

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_no_arguments_is_the_embedded_default():
    cfg = load_config([])
    assert isinstance(cfg, Config) and cfg.model.path == "tiny" and cfg.data.source == "synthetic"
    assert load_config([str(DEFAULT_CONFIG)]) == cfg


def test_overrides_apply_in_order_and_are_typed(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("trainer:\n  steps: 7\noptimizer:\n  lr: 3.0e-4\n")
    cfg = load_config([str(DEFAULT_CONFIG), str(extra), "trainer.steps=9", "rollout.temperature=0.5",
                       "data.length_buckets=[64,128]"])
    assert cfg.trainer.steps == 9 and cfg.optimizer.lr == 3e-4 and cfg.rollout.temperature == 0.5
    assert cfg.data.length_buckets == [64, 128]


def test_the_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(["trainer.steps=3", "reward.rule=signed"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config([str(saved)]) == cfg


@pytest.mark.parametrize("key, suggestion", [("trainer.stpes", "trainer.steps"), ("stage", "trainer.stage"),
                                             ("optimizer.learning_rate", None), ("rollout.temprature",
                                                                                  "rollout.temperature")])
def test_unknown_keys_are_named_with_the_closest_valid_key(key, suggestion):
    with pytest.raises(ConfigError) as error:
        load_config([f"{key}=1"])
    assert repr(key) in str(error.value)
    if suggestion:
        assert f"did you mean {suggestion!r}" in str(error.value)


def test_unknown_keys_in_a_yaml_file_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match="trainer.batchsize.*trainer.batch_size"):
        load_config([str(bad)])


@pytest.mark.parametrize("override, message", [
    ("trainer.steps=abc", "trainer.steps"),
    ("trainer.stage=foo", "trainer.stage='foo' is not one of"),
    ("algorithm.micro_batch_size=7", "pick a divisor of 64"),
    ("algorithm.mini_batch_size=48", "does not divide the rollout batch"),
    ("rollout.n=1", "at least 2 samples"),
    ("rollout.temperature=0", "rollout.temperature must be > 0"),
    ("optimizer.lr=-1", "optimizer.lr must be a positive number"),
    ("optimizer.warmup_ratio=1.5", "optimizer.warmup_ratio must be in [0, 1)"),
    ("data.source=files", "data.train_files"),
    ("data.length_buckets=[128,64]", "ascending"),
    ("trainer.mesh.fsdp=0", "trainer.mesh.fsdp"),
    ("rollout.backend=sglang", "rollout.backend='sglang' is not one of"),
    ("reward.judge.backend=remote", "needs reward.judge.url"),
    ("rollout.vllm.kv_cache_gib=0", "rollout.vllm.kv_cache_gib must be > 0"),
    ("rollout.vllm.gpu_memory_utilization=1.5", "rollout.vllm.gpu_memory_utilization must be in (0, 1]"),
    ("rollout.stop_token_ids=[3,-5]", "rollout.stop_token_ids must be token ids"),
    ("reward.judge.max_retries=-1", "reward.judge.max_retries must be >= 0"),
])
def test_bad_values_say_what_to_change(override, message):
    with pytest.raises(ConfigError) as error:
        load_config([override])
    assert message in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["rollout.backend=vllm", "rollout.vllm.tensor_parallel_size=2"], "tensor_parallel_size=1"),
    (["rollout.backend=vllm", "rollout.logprobs=sampler", "rollout.top_p=0.9"], "use rollout.logprobs=trainer"),
])
def test_vllm_combinations_that_cannot_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)
    load_config(overrides[:1])  # the backend alone is fine


def test_arguments_must_be_yaml_files_or_assignments(tmp_path):
    with pytest.raises(ConfigError, match="CONFIG.yaml or key=value"):
        load_config(["trainer.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([str(tmp_path / "missing.yaml")])


def test_the_mesh_must_fit_the_devices_and_the_batch():
    cfg = load_config(["algorithm.micro_batch_size=8", "sft.micro_batch_size=8", "sft.batch_size=16"])
    assert check_mesh(cfg, 8) == (1, 8, 1)
    cfg.trainer.mesh.data, cfg.trainer.mesh.fsdp = 2, 2
    with pytest.raises(ConfigError, match="does not fit 6 device"):
        check_mesh(cfg, 6)
    with pytest.raises(ConfigError, match="4 devices, but 8 are available"):
        check_mesh(cfg, 8)
    cfg.trainer.mesh.fsdp = -1
    assert check_mesh(cfg, 8) == (2, 4, 1)
    cfg.algorithm.micro_batch_size = 4
    with pytest.raises(ConfigError, match="not divisible by the 8 batch shards"):
        check_mesh(cfg, 8)
    cfg.algorithm.micro_batch_size = 8
    cfg.trainer.batch_size = 3
    with pytest.raises(ConfigError, match="not divisible by the 2 processes"):
        check_mesh(cfg, 8, process_count=2)


def test_every_key_is_reachable_by_an_override():
    keys = all_keys()
    assert "trainer.mesh.fsdp" in keys and "model.path" in keys and len(keys) == len(set(keys))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    load_config([str(path), "trainer.dry_run=true"])
