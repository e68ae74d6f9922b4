"""The run configuration: YAML + key=value merging, types, unknown keys, impossible combinations."""

import json
from pathlib import Path

import PIL.Image
import pytest

from grlhf import config as config_module
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
    ("sft.answer_steps=-1", "sft.answer_steps must be >= 0"),
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


@pytest.mark.parametrize("text, message", [
    ("trainer:\n  steps: [1\n", r"is not valid YAML: expected ',' or '\]', but got '<stream end>' at line 3"),
    ("trainer: {steps: 1}\ntrainer: {steps: 2}\n", "is not valid YAML: found duplicate key trainer at line 2"),
    ("- trainer.steps=1\n- rollout.n=4\n", r"the top level must be a mapping of sections .* got a list"),
    ("just words\n", "the top level must be a mapping of sections .* got a str"),
])
def test_a_yaml_file_that_is_not_a_mapping_of_sections_is_a_config_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"config file {path}.*{message}"):
        load_config([str(path)])
    (tmp_path / "empty.yaml").write_text("")  # an empty file sets nothing
    assert load_config([str(tmp_path / "empty.yaml")]) == Config()


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


# ---- choices come from the modules that implement them ---------------------------------------------------


def _implemented_choices() -> dict:
    """Each choice key and the constant of the module that implements (and validates) it."""
    from grlhf.data import loaders
    from grlhf.data.synthetic import generate
    from grlhf.models.qwen_vl import layers, remat
    from grlhf.reward import rules
    from grlhf.rl import advantages, kl, kl_control, losses
    from grlhf.rollout import vllm_engine
    from grlhf.trainer import optim

    return {
        "model.attention_impl": layers.ATTENTION_IMPLS,
        "model.remat": remat.REMAT_POLICIES,
        "data.format": loaders.PAIR_FORMATS,
        "data.preference_field": loaders.BEAVERTAILS_PREFERENCE_FIELDS,
        "data.on_bad_row": loaders.BAD_ROW_POLICIES,
        "data.trace_style": generate.TRACE_STYLES,
        "data.grm_error_mode": generate.GRM_ERROR_MODES,
        "data.policy_error_mode": generate.POLICY_ERROR_MODES,
        "rollout.vllm.dtype": vllm_engine.DTYPES,
        "algorithm.advantage": advantages.ADVANTAGES,
        "algorithm.loss_agg_mode": losses.AGG_MODES,
        "algorithm.kl_type": kl.KL_KINDS,
        "algorithm.kl_in_reward.type": kl_control.KL_CONTROLLERS,
        "algorithm.kl_in_reward.kl_type": kl.KL_KINDS,
        "reward.rule": rules.RULE_VARIANTS,
        "optimizer.schedule": optim.SCHEDULES,  # restated in config.py (it cannot import the trainer)
        "sft.schedule": optim.SCHEDULES,
    }


# choices only the trainer implements: defined in config.py, which the trainer imports
CONFIG_OWNED = {
    "trainer.stage": "STAGES", "model.dtype": "MODEL_DTYPES", "model.param_dtype": "MODEL_DTYPES",
    "data.source": "DATA_SOURCES", "rollout.backend": "ROLLOUT_BACKENDS", "reward.judge.backend": "JUDGE_BACKENDS",
    "rollout.logprobs": "LOGPROB_SOURCES", "reward.source": "REWARD_SOURCES", "pipeline.policy_init": "POLICY_INITS",
    "model.loss_logits": "LOSS_LOGITS",
}


def test_every_choice_table_entry_is_the_implementing_modules_constant():
    table = config_module._CHOICES
    implemented = _implemented_choices()
    assert set(table) == set(implemented) | set(CONFIG_OWNED), "a choice key without a known owner"
    for key, constant in implemented.items():
        assert tuple(table[key]) == tuple(constant), key
    for key, name in CONFIG_OWNED.items():
        assert table[key] is getattr(config_module, name), key
    assert set(table) <= set(all_keys())


def test_every_choice_of_every_key_loads():
    for key, choices in config_module._CHOICES.items():
        for value in choices:
            extra = ["reward.judge.url=http://judge:8000"] if value == "remote" else []
            load_config([f"{key}={value}", "trainer.dry_run=true", *extra])


@pytest.mark.parametrize("kind", ["kl+", "abs+", "mse+", "k1+", "low_var_kl+"])
def test_straight_through_kl_types_are_accepted(kind):
    assert load_config([f"algorithm.kl_type={kind}"]).algorithm.kl_type == kind


def test_on_bad_row_uses_the_loaders_words(tmp_path):
    with pytest.raises(ConfigError, match="data.on_bad_row='error' is not one of \\['skip', 'raise'\\]"):
        load_config(["data.on_bad_row=error"])
    cfg = load_config(["data.on_bad_row=raise"])
    assert cfg.data.on_bad_row == "raise"

    from grlhf.data.loaders import load_preference_pairs

    PIL.Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "q0", "chosen": "c", "rejected": "r"},
            {"image": "missing.png", "question": "q1", "chosen": "c", "rejected": "r"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs, report = load_preference_pairs(path, format="jsonl_pairs", on_bad_row="skip")
    assert len(pairs) == 1 and len(report.bad_rows) == 1
    with pytest.raises(ValueError, match="row 1: image_not_found"):
        load_preference_pairs(path, format="jsonl_pairs", on_bad_row=cfg.data.on_bad_row)


def test_question_kinds_must_be_known():
    with pytest.raises(ConfigError, match="data.question_kinds must be a non-empty subset"):
        load_config(["data.question_kinds=[colour,smell]"])
    with pytest.raises(ConfigError, match="data.question_kinds must be a non-empty subset"):
        load_config(["data.question_kinds=[]"])


# ---- algorithm.kl_in_reward ----------------------------------------------------------------------------


def test_kl_in_reward_defaults_follow_verl():
    kir = load_config([]).algorithm.kl_in_reward
    assert (kir.enabled, kir.type, kir.coef, kir.target_kl, kir.horizon, kir.kl_type) == (
        False, "fixed", 0.001, 0.1, 10000, "kl")


def test_kl_in_reward_settings_load():
    cfg = load_config(["algorithm.kl_in_reward.enabled=true", "algorithm.kl_in_reward.type=adaptive",
                       "algorithm.kl_in_reward.coef=0.05", "algorithm.kl_in_reward.target_kl=6",
                       "algorithm.kl_in_reward.horizon=500", "algorithm.kl_in_reward.kl_type=low_var_kl"])
    kir = cfg.algorithm.kl_in_reward
    assert (kir.enabled, kir.type, kir.coef, kir.target_kl, kir.horizon, kir.kl_type) == (
        True, "adaptive", 0.05, 6.0, 500, "low_var_kl")
    # both KL penalties at once are allowed, as in verl (the policy pays twice)
    both = load_config(["algorithm.kl_in_reward.enabled=true", "algorithm.kl_coef=0.01"])
    assert both.algorithm.kl_in_reward.enabled and both.algorithm.kl_coef == 0.01


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.kl_in_reward.type=pid"], "algorithm.kl_in_reward.type='pid' is not one of ['fixed', 'adaptive']"),
    (["algorithm.kl_in_reward.kl_type=k4"], "algorithm.kl_in_reward.kl_type='k4' is not one of"),
    (["algorithm.kl_in_reward.coef=-0.1"], "algorithm.kl_in_reward.coef must be >= 0"),
    (["algorithm.kl_in_reward.coef=nan"], "algorithm.kl_in_reward.coef must be >= 0"),
    (["algorithm.kl_in_reward.type=adaptive", "algorithm.kl_in_reward.target_kl=0"], "needs target_kl > 0"),
    (["algorithm.kl_in_reward.type=adaptive", "algorithm.kl_in_reward.horizon=0"], "and horizon > 0"),
    (["algorithm.kl_in_reward.enabled=true", "algorithm.kl_in_reward.type=adaptive",
      "algorithm.kl_in_reward.coef=0"], "coef=0 stays 0"),
    (["algorithm.kl_in_reward.enabled=maybe"], "algorithm.kl_in_reward.enabled"),
])
def test_kl_in_reward_bad_settings(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides)
    assert message in str(error.value)


def test_kl_in_reward_settings_build_a_controller():
    from grlhf.rl import KLController

    kir = load_config(["algorithm.kl_in_reward.type=adaptive"]).algorithm.kl_in_reward
    controller = KLController(kir.type, init_coef=kir.coef, target_kl=kir.target_kl, horizon=kir.horizon)
    assert float(controller.update(kir.coef, 2 * kir.target_kl, kir.horizon)) == pytest.approx(kir.coef * 1.2)


@pytest.mark.parametrize("overrides, message", [
    (["reward.principles=true"], "none are configured"),
    (["data.principles=a", "data.principles_file=b.md"], "one way"),
    (["data.principles_field=why"], "need data.source=files"),
    (["data.source=files", "data.train_files=x", "data.score_fields=[s1]"], "two columns"),
    (["experiment=n_scaling", "experiment.seeds=[0,0]"], "experiment.seeds must be distinct"),
    (["experiment.n_values=[1,2]"], "experiment.n_values"),
    (["experiment.arms=[grm,dpo]"], "experiment.arms"),
])
def test_principles_scores_and_experiment_settings_say_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


def test_experiment_name_shorthand_in_overrides_and_yaml(tmp_path):
    cfg = load_config(["experiment=n_scaling", "experiment.seeds=[0,1,2]"])
    assert cfg.experiment.name == "n_scaling" and cfg.experiment.seeds == [0, 1, 2]
    path = tmp_path / "x.yaml"
    path.write_text("experiment: n_scaling\n")
    assert load_config([str(path)]).experiment.name == "n_scaling"
    path.write_text(to_yaml(cfg))
    assert load_config([str(path)]).experiment == cfg.experiment
    assert load_config([]).experiment.name is None
