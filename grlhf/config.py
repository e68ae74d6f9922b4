"""The run configuration: one dataclass tree is the schema (``grlhf.config_schema``, re-exported here); YAML
files and ``key=value`` overrides set it.

``load_config(["configs/x.yaml", "trainer.steps=10"])`` merges the YAML files in order and then the dotted
overrides with OmegaConf, type-checks every value against the dataclasses and validates combinations.
An unknown key is an error that names it and suggests the closest valid key; an impossible combination
says what to change. Without a YAML file the embedded default ``configs/default.yaml`` is used.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

# The allowed values of a choice key come from the module that implements the choice (one source; the
# module validates its own arguments with the same constant). config.py must not import grlhf.trainer
# (the trainer imports config), so the choices the trainer alone implements are defined below.
from grlhf.config_schema import (
    AlgorithmConfig, CheckpointConfig, Config, DataConfig, DistributedConfig, ExperimentConfig, JudgeBackendConfig,
    KLInRewardConfig, LoggingConfig, MeshConfig, ModelConfig, OptimizerConfig, PipelineConfig, RewardConfig,
    RolloutConfig, SFTConfig, TrainerConfig, VLLMConfig)
from grlhf.errors import UserError
from grlhf.data.loaders import BAD_ROW_POLICIES, BEAVERTAILS_PREFERENCE_FIELDS, PAIR_FORMATS
from grlhf.data.synthetic.generate import GRM_ERROR_MODES, POLICY_ERROR_MODES, TRACE_STYLES, is_colour_cycle
from grlhf.data.synthetic.world import COLOURS, QUESTION_KINDS
from grlhf.models.qwen_vl.layers import ATTENTION_IMPLS
from grlhf.models.qwen_vl.remat import REMAT_POLICIES, remat_name
from grlhf.reward.rules import RULE_VARIANTS
from grlhf.rl.advantages import ADVANTAGES
from grlhf.rl.kl import KL_KINDS
from grlhf.rl.kl_control import KL_CONTROLLERS
from grlhf.rl.losses import AGG_MODES
from grlhf.rollout.vllm_engine import DTYPES as VLLM_DTYPES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

# Choices implemented only in grlhf/trainer/ (which config.py cannot import), so defined here; the trainer
# should import these rather than restate them.
STAGES = ("sft", "grm", "policy", "rm", "pipeline")  # trainer.stage
MODEL_DTYPES = ("float32", "bfloat16")  # model.dtype / model.param_dtype (the trainer casts the model)
DATA_SOURCES = ("synthetic", "files")  # data.source
ROLLOUT_BACKENDS = ("jax", "vllm")  # rollout.backend (rollout/ holds the engines; the trainer picks one)
JUDGE_BACKENDS = ("jax", "vllm", "remote")  # reward.judge.backend
LOGPROB_SOURCES = ("trainer", "sampler")  # rollout.logprobs
LOSS_LOGITS = ("responses", "rows")  # model.loss_logits (trainer/batches.py)
REWARD_SOURCES = ("grm", "grm_single", "rm", "oracle")  # reward.source
POLICY_INITS = ("base", "grm_warm_start")  # pipeline.policy_init
EXPERIMENTS = ("n_scaling",)  # experiment.name (or None)
# optimizer.schedule: trainer/optim.py's SCHEDULES, restated because config.py cannot import the trainer;
# tests/test_config.py asserts the two are equal
SCHEDULES = ("cosine", "constant")


class ConfigError(UserError, ValueError):
    """A configuration that cannot run; the message says which key and what to change."""


# ---- loading -----------------------------------------------------------------------------------------


def all_keys(schema: Any = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (leaves only)."""
    keys = []
    for f in fields(schema):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        name = f"{prefix}{f.name}"
        keys.extend(all_keys(type(default), name + ".") if is_dataclass(default) else [name])
    return keys


def _unknown_key_error(key: str) -> ConfigError:
    keys = all_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:  # a misspelt leaf under the right section: compare the last component
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] in difflib.get_close_matches(leaf, [
            k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.6)][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _merge(base, other, where: str):
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as error:
        key = error.full_key or str(getattr(error, "key", ""))
        raise _unknown_key_error(key) from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"{where}: {getattr(error, 'msg', error)}".replace("\n", " ")) from None


def _experiment_shorthand(node):
    """A YAML file's ``experiment: n_scaling`` as ``experiment: {name: n_scaling}``."""
    if OmegaConf.is_dict(node) and "experiment" in node and not OmegaConf.is_dict(node.experiment):
        node.experiment = {"name": node.experiment}
    return node


def load_yaml(path: str) -> DictConfig:
    """A config file as OmegaConf; ``ConfigError`` if it is missing, not YAML, or not a mapping at the top."""
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        top = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(error)}") from None
    if top is not None and not isinstance(top, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections (model:, data:, "
                          f"trainer:, ...), got a {type(top).__name__}")
    return loaded


def _yaml_problem(error: Exception) -> str:
    """What the YAML parser objected to and where (line and column, 1-based), on one line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def load_config(args: Sequence[str] = ()) -> Config:
    """Merge YAML files (arguments ending in .yaml/.yml) and ``key=value`` overrides, in order.

    With no YAML file, the embedded default ``configs/default.yaml`` comes first.
    """
    files = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    bad = [a for a in files if not a.endswith((".yaml", ".yml"))]
    if bad:
        raise ConfigError(f"expected CONFIG.yaml or key=value arguments, got {bad}")
    merged = OmegaConf.structured(Config)
    for path in files or [str(DEFAULT_CONFIG)]:
        merged = _merge(merged, _experiment_shorthand(load_yaml(path)), path)
    overrides = [f"experiment.name={o.split('=', 1)[1]}" if o.split("=", 1)[0].strip() == "experiment" else o
                 for o in overrides]
    for override in overrides:
        if override.split("=", 1)[0].strip() == "":
            raise ConfigError(f"override {override!r} has no key")
    base = merged
    merged = _merge(base, OmegaConf.from_dotlist(overrides), "overrides")
    stage = {"sft": "grm"}.get(merged.trainer.stage, merged.trainer.stage)
    stage_overrides = list(merged.pipeline.get(stage, None) or []) if stage in ("grm", "policy") else []
    if stage_overrides:
        merged = _merge(base, OmegaConf.from_dotlist(stage_overrides), f"pipeline.{stage}")
        merged = _merge(merged, OmegaConf.from_dotlist(overrides), "overrides")
    cfg = OmegaConf.to_object(merged)
    if str(cfg.model.remat).lower() in ("true", "false"):  # the bool of earlier configs
        cfg.model.remat = remat_name(str(cfg.model.remat))
    validate(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved in the run directory; loadable by ``load_config``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ---- validation --------------------------------------------------------------------------------------

_CHOICES = {
    "trainer.stage": STAGES,
    "model.dtype": MODEL_DTYPES,
    "model.param_dtype": MODEL_DTYPES,
    "model.attention_impl": ATTENTION_IMPLS,
    "model.remat": REMAT_POLICIES,
    "model.loss_logits": LOSS_LOGITS,
    "data.source": DATA_SOURCES,
    "data.format": PAIR_FORMATS,
    "data.preference_field": BEAVERTAILS_PREFERENCE_FIELDS,
    "data.on_bad_row": BAD_ROW_POLICIES,
    "data.trace_style": TRACE_STYLES,
    "data.grm_error_mode": GRM_ERROR_MODES,
    "data.policy_error_mode": POLICY_ERROR_MODES,
    "rollout.backend": ROLLOUT_BACKENDS,
    "rollout.vllm.dtype": VLLM_DTYPES,
    "reward.judge.backend": JUDGE_BACKENDS,
    "rollout.logprobs": LOGPROB_SOURCES,
    "algorithm.advantage": ADVANTAGES,
    "algorithm.loss_agg_mode": AGG_MODES,
    "algorithm.kl_type": KL_KINDS,
    "algorithm.kl_in_reward.type": KL_CONTROLLERS,
    "algorithm.kl_in_reward.kl_type": KL_KINDS,
    "reward.rule": RULE_VARIANTS,
    "pipeline.policy_init": POLICY_INITS,
    "reward.source": REWARD_SOURCES,
    "optimizer.schedule": SCHEDULES,
    "sft.schedule": SCHEDULES,
}


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the key and the fix for any value or combination that cannot run."""
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not one of {list(choices)}")
    positive = ["trainer.batch_size", "trainer.epochs", "rollout.n", "rollout.max_tokens", "algorithm.ppo_epochs",
                "algorithm.micro_batch_size", "sft.batch_size", "sft.micro_batch_size", "data.max_prompt_length",
                "checkpoint.keep", "trainer.max_bad_steps", "sft.max_length", "reward.judge_samples",
                "reward.judge_max_tokens", "reward.judge_batch"]
    for key in positive:
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    non_negative = ["trainer.steps", "trainer.eval_every", "sft.eval_every", "sft.steps", "sft.answer_steps",
                    "checkpoint.every",
                    "algorithm.kl_coef", "algorithm.entropy_coef", "algorithm.mini_batch_size",
                    "optimizer.weight_decay", "optimizer.max_grad_norm", "data.num_eval", "rollout.top_k",
                    "rollout.max_rows", "trainer.seed", "data.seed", "model.head_chunk",
                    "pipeline.eval_scored_questions", "checkpoint.interval_s", "logging.profile_steps",
                    "logging.profile_from"]
    for key in non_negative:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_get(cfg, key)}")
    for key in ("optimizer.lr", "sft.lr", "algorithm.clip_ratio_low", "algorithm.clip_ratio_high"):
        value = _get(cfg, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{key} must be a positive number, got {value}")
    for key in ("optimizer.warmup_ratio", "sft.warmup_ratio", "optimizer.min_lr_ratio", "sft.answer_fraction"):
        if not 0.0 <= _get(cfg, key) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {_get(cfg, key)}")
    if cfg.algorithm.clip_ratio_c <= 1.0:
        raise ConfigError(f"algorithm.clip_ratio_c must be > 1 (dual clip), got {cfg.algorithm.clip_ratio_c}")
    if not 0.0 < cfg.rollout.top_p <= 1.0:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.trainer.stage != "sft" and not cfg.rollout.temperature > 0:
        raise ConfigError(f"rollout.temperature must be > 0 for RL (log-probs are of logits / T), "
                          f"got {cfg.rollout.temperature}")
    if cfg.rollout.n < 2 and cfg.trainer.stage in ("grm", "policy", "pipeline"):
        raise ConfigError(f"rollout.n={cfg.rollout.n}: group advantages need at least 2 samples per prompt")
    rows = cfg.trainer.batch_size * cfg.rollout.n
    mini = cfg.algorithm.mini_batch_size or rows
    if rows % mini:
        raise ConfigError(f"algorithm.mini_batch_size={mini} does not divide the rollout batch "
                          f"trainer.batch_size x rollout.n = {rows}; pick a divisor of {rows}")
    if mini % cfg.algorithm.micro_batch_size:
        raise ConfigError(f"algorithm.micro_batch_size={cfg.algorithm.micro_batch_size} does not divide the "
                          f"mini-batch of {mini} sequences; pick a divisor of {mini}")
    if cfg.sft.batch_size % cfg.sft.micro_batch_size:
        raise ConfigError(f"sft.micro_batch_size={cfg.sft.micro_batch_size} does not divide "
                          f"sft.batch_size={cfg.sft.batch_size}")
    if cfg.trainer.resume and not cfg.trainer.run_dir and not cfg.trainer.dry_run:
        raise ConfigError("trainer.resume=true needs trainer.run_dir (the directory of the run to continue)")
    if cfg.data.source == "files" and not cfg.data.train_files and not cfg.trainer.dry_run:
        raise ConfigError("data.source=files needs data.train_files (a parquet/jsonl file or directory)")
    if cfg.reward.balanced_orders and cfg.trainer.stage in ("grm", "pipeline") and cfg.trainer.batch_size % 2:
        raise ConfigError(f"reward.balanced_orders shows each pair in both orders: trainer.batch_size="
                          f"{cfg.trainer.batch_size} must be even (or set reward.balanced_orders=false)")
    d = cfg.data
    if d.principles is not None and d.principles_file is not None:
        raise ConfigError("data.principles and data.principles_file are both set: give the dataset's principles "
                          "one way")
    if cfg.reward.principles and not (d.principles or d.principles_file or d.principles_field):
        raise ConfigError("reward.principles=true shows the dataset's principles to the judge, but none are "
                          "configured: set data.principles (text), data.principles_file or data.principles_field")
    if d.source == "synthetic" and (d.principles_field or d.score_fields):
        raise ConfigError("data.principles_field and data.score_fields name columns of data files: they need "
                          "data.source=files")
    if d.policy_error_cycle and not is_colour_cycle(d.policy_error_cycle):
        raise ConfigError(f"data.policy_error_cycle must list each of {list(COLOURS)} once (each colour's wrong "
                          f"answer is the next), got {list(d.policy_error_cycle)}")
    if d.score_fields is not None and len(d.score_fields) != 2:
        raise ConfigError(f"data.score_fields names two columns (the scores of response_1 and response_2), got "
                          f"{d.score_fields}")
    validate_experiment(cfg.experiment)
    unknown_kinds = sorted(set(cfg.data.question_kinds) - set(QUESTION_KINDS))
    if not cfg.data.question_kinds or unknown_kinds:
        raise ConfigError(f"data.question_kinds must be a non-empty subset of {list(QUESTION_KINDS)}, got "
                          f"{cfg.data.question_kinds}")
    kir = cfg.algorithm.kl_in_reward
    if not (math.isfinite(kir.coef) and kir.coef >= 0):
        raise ConfigError(f"algorithm.kl_in_reward.coef must be >= 0, got {kir.coef}")
    if kir.type == "adaptive" and not (math.isfinite(kir.target_kl) and kir.target_kl > 0 and kir.horizon > 0):
        raise ConfigError(f"algorithm.kl_in_reward.type=adaptive needs target_kl > 0 and horizon > 0, got "
                          f"target_kl={kir.target_kl}, horizon={kir.horizon}")
    if kir.enabled and kir.type == "adaptive" and kir.coef == 0:
        raise ConfigError("algorithm.kl_in_reward.type=adaptive scales the coefficient, so coef=0 stays 0: set "
                          "algorithm.kl_in_reward.coef > 0 (or enabled=false)")
    if cfg.trainer.stage == "policy" and cfg.reward.source.startswith("grm") and not cfg.reward.judge_path \
            and not cfg.trainer.dry_run:
        raise ConfigError("trainer.stage=policy with reward.source=grm needs reward.judge_path (the GRM's HF "
                          "directory, e.g. <run>/hf/grm), or reward.source=oracle on the synthetic task")
    if cfg.trainer.stage == "policy" and cfg.reward.source == "rm" and not cfg.reward.rm_path \
            and not cfg.trainer.dry_run:
        raise ConfigError("reward.source=rm needs reward.rm_path (the directory trainer.stage=rm exported, "
                          "<run>/hf/rm)")
    if cfg.reward.source == "oracle" and cfg.data.source != "synthetic":
        raise ConfigError("reward.source=oracle needs data.source=synthetic (real prompts have no checker)")
    if cfg.reward.judge.backend == "remote" and not cfg.reward.judge.url:
        raise ConfigError("reward.judge.backend=remote needs reward.judge.url (the OpenAI-compatible server, "
                          "e.g. http://host:8000)")
    for key in ("rollout.vllm.max_model_len", "rollout.vllm.max_num_seqs", "rollout.vllm.tensor_parallel_size",
                "reward.judge.max_concurrency"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    for key in ("rollout.vllm.kv_cache_gib", "reward.judge.timeout"):
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key} must be > 0, got {_get(cfg, key)}")
    if cfg.reward.judge.max_retries < 0:
        raise ConfigError(f"reward.judge.max_retries must be >= 0, got {cfg.reward.judge.max_retries}")
    if not 0.0 < cfg.rollout.vllm.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"rollout.vllm.gpu_memory_utilization must be in (0, 1], got "
                          f"{cfg.rollout.vllm.gpu_memory_utilization}")
    if any(token < 0 for token in cfg.rollout.stop_token_ids):
        raise ConfigError(f"rollout.stop_token_ids must be token ids (>= 0), got {cfg.rollout.stop_token_ids}")
    if cfg.rollout.backend == "vllm" and cfg.rollout.vllm.tensor_parallel_size != 1:
        raise ConfigError("rollout.backend=vllm pushes the trainer's weights into an in-process engine, which needs "
                          "rollout.vllm.tensor_parallel_size=1 (a tensor-parallel engine runs in worker processes "
                          "the bridge cannot hand tensors to)")
    if cfg.rollout.backend == "vllm" and cfg.rollout.logprobs == "sampler" and (
            cfg.rollout.top_k > 0 or cfg.rollout.top_p < 1.0):
        raise ConfigError("rollout.logprobs=sampler with rollout.backend=vllm needs top_k=0 and top_p=1: with "
                          "truncation vLLM reports the truncated distribution's log-probs, not the trainer's; use "
                          "rollout.logprobs=trainer")
    if not cfg.data.length_buckets or sorted(cfg.data.length_buckets) != list(cfg.data.length_buckets):
        raise ConfigError(f"data.length_buckets must be a non-empty ascending list, got {cfg.data.length_buckets}")
    for key in ("mesh.data", "mesh.tp"):
        if _get(cfg.trainer, key) < 1:
            raise ConfigError(f"trainer.{key} must be >= 1, got {_get(cfg.trainer, key)}")
    if cfg.trainer.mesh.fsdp == 0 or cfg.trainer.mesh.fsdp < -1:
        raise ConfigError(f"trainer.mesh.fsdp must be >= 1 or -1 (all remaining devices), got {cfg.trainer.mesh.fsdp}")


def validate_experiment(e: ExperimentConfig) -> None:
    if e.name is not None and e.name not in EXPERIMENTS:
        raise ConfigError(f"experiment={e.name!r} is not one of {list(EXPERIMENTS)}")
    if not e.seeds or len(set(e.seeds)) != len(e.seeds) or min(e.seeds) < 0:
        raise ConfigError(f"experiment.seeds must be distinct seeds >= 0, got {e.seeds}")
    if not e.n_values or min(e.n_values) < 2:
        raise ConfigError(f"experiment.n_values must be answers per prompt >= 2, got {e.n_values}")
    if not e.arms or set(e.arms) - set(REWARD_SOURCES) or len(set(e.arms)) != len(e.arms):
        raise ConfigError(f"experiment.arms must be distinct reward sources among {list(REWARD_SOURCES)}, got "
                          f"{e.arms}")


def check_mesh(cfg: Config, device_count: int, process_count: int = 1) -> tuple[int, int, int]:
    """The mesh shape ``(data, fsdp, tp)`` for ``device_count`` devices; errors say what to change."""
    mesh = cfg.trainer.mesh
    fixed = mesh.data * mesh.tp * (mesh.fsdp if mesh.fsdp > 0 else 1)
    if device_count % fixed:
        raise ConfigError(f"trainer.mesh data={mesh.data} x fsdp={mesh.fsdp} x tp={mesh.tp} does not fit "
                          f"{device_count} device(s)")
    fsdp = mesh.fsdp if mesh.fsdp > 0 else device_count // fixed
    if mesh.data * fsdp * mesh.tp != device_count:
        raise ConfigError(f"trainer.mesh data={mesh.data} x fsdp={fsdp} x tp={mesh.tp} = "
                          f"{mesh.data * fsdp * mesh.tp} devices, but {device_count} are available")
    batch_ways = mesh.data * fsdp
    if cfg.algorithm.micro_batch_size % batch_ways:
        raise ConfigError(f"algorithm.micro_batch_size={cfg.algorithm.micro_batch_size} is not divisible by the "
                          f"{batch_ways} batch shards of the mesh (data x fsdp); use a multiple of {batch_ways}")
    if cfg.sft.micro_batch_size % batch_ways:
        raise ConfigError(f"sft.micro_batch_size={cfg.sft.micro_batch_size} is not divisible by the "
                          f"{batch_ways} batch shards of the mesh (data x fsdp); use a multiple of {batch_ways}")
    # each process loads an equal slice of every global batch of records
    per_step = {"trainer.batch_size": cfg.trainer.batch_size}
    if cfg.sft.steps > 0:
        per_step["sft.batch_size"] = cfg.sft.batch_size
    for key, size in per_step.items():
        if size % process_count:
            raise ConfigError(f"{key}={size} is not divisible by the {process_count} processes; each process "
                              "loads an equal slice")
    if cfg.reward.balanced_orders and cfg.trainer.stage in ("grm", "pipeline") and (
            cfg.trainer.batch_size // 2) % process_count:
        raise ConfigError(f"reward.balanced_orders: the GRM's {cfg.trainer.batch_size // 2} pairs per step "
                          f"(trainer.batch_size={cfg.trainer.batch_size} / 2) are not divisible by the "
                          f"{process_count} processes; use a multiple of {2 * process_count}")
    return mesh.data, fsdp, mesh.tp


__all__ = ["AlgorithmConfig", "CheckpointConfig", "Config", "ConfigError", "DATA_SOURCES", "DEFAULT_CONFIG",
           "DataConfig", "DistributedConfig", "EXPERIMENTS", "ExperimentConfig", "JUDGE_BACKENDS", "JudgeBackendConfig",
           "KLInRewardConfig", "LOGPROB_SOURCES", "LoggingConfig", "MODEL_DTYPES", "MeshConfig", "ModelConfig",
           "OptimizerConfig", "POLICY_INITS", "PipelineConfig", "REWARD_SOURCES", "ROLLOUT_BACKENDS", "RewardConfig",
           "RolloutConfig", "SCHEDULES", "SFTConfig", "STAGES", "TrainerConfig", "VLLMConfig", "all_keys", "check_mesh",
           "load_config", "to_yaml", "validate", "validate_experiment"]
