"""The run configuration's schema: one dataclass per section (``model``, ``data``, ... ``experiment``) and
``Config``, their tree. Field comments say what each key does; ``grlhf.config`` loads and validates it (the
choice lists a key may take are there, in ``_CHOICES``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelConfig:
    path: str = "tiny"  # an HF model directory, or "tiny" / "tiny:qwen2_5_vl" (built offline, cached)
    tiny_seed: int = 0
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the trained parameters
    # what each layer keeps for the backward pass: none | full | dots | dots_no_batch (models/qwen_vl/remat.py;
    # true / false read as full / none)
    remat: str = "none"
    # where the train step computes logits: "responses" (each row's response window only, the LM head fused
    # with the log-softmax head_chunk vocabulary columns at a time; trainer/step.py) or "rows" (the whole rows'
    # logits at once: the reference formula, [B, T, V] float32; the embedded default keeps it, see
    # configs/default.yaml)
    loss_logits: str = "responses"
    # vocabulary columns per chunk of the fused LM head (rl/fused_head.py); 0: the windows' logits at once
    head_chunk: int = 8192
    # xla | cudnn | auto: cudnn on a GPU in bf16/fp16, else xla | xla_autodiff: xla's formula, and the MLPs and
    # projections, differentiated by JAX rather than by their written-out backward passes
    # (models/qwen_vl/layers.py ATTENTION_IMPLS, written_backward)
    attention_impl: str = "xla"


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | files
    train_files: Optional[str] = None  # parquet / jsonl file or directory (source=files)
    eval_files: Optional[str] = None
    format: str = "align_anything"  # align_anything | beavertails_v | jsonl_pairs (columns of preference files)
    # beavertails_v: which label column is the preference (the helpfulness or the safety comparison)
    preference_field: str = "more_helpful_response_id"
    on_bad_row: str = "skip"  # skip (counted, logged) | raise (a ValueError naming file, row and reason)
    # evaluation principles (reward.principles shows them to the judge; GRM+SFT targets use them as criteria):
    # the dataset's, as text or a file (not both), and a column holding each row's own (files)
    principles: Optional[str] = None
    principles_file: Optional[str] = None
    principles_field: Optional[str] = None
    # the dataset's scores of response_1 and response_2 (two columns; files): GRM+SFT targets use them
    score_fields: Optional[list[str]] = None
    seed: int = 0
    # the synthetic task (source=synthetic)
    num_train: int = 1000  # preference pairs (GRM) or prompts (policy)
    num_eval: int = 64  # held-out items (a disjoint index range)
    image_size: int = 112
    max_shapes: int = 3
    question_kinds: list[str] = field(default_factory=lambda: ["colour", "shape", "count", "position", "describe"])
    grm_error_rate: float = 0.2
    grm_error_mode: str = "uniform"  # uniform | prefer_first (flipped traces only when the better answer is second)
    policy_error_rate: float = 0.5
    # random | systematic (the same wrong answer for a given right one) | derangement (and a different one for each)
    policy_error_mode: str = "random"
    policy_error_cycle: list[str] = field(default_factory=list)  # derangement's colour order; empty: from the seed
    trace_style: str = "full"  # GRM warm-start traces: full (the paper's three lines) | short (Analysis + Scores)
    # shapes
    max_prompt_length: int = 4096  # longer prompts are counted and skipped
    length_buckets: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048, 4096])
    patch_buckets: Optional[list[int]] = None


@dataclass
class VLLMConfig:
    """An in-process ``vllm.LLM`` (``rollout.backend=vllm`` / ``reward.judge.backend=vllm``)."""

    dtype: str = "auto"  # the engine's dtype: auto (model.dtype) | float32 | bfloat16 | float16
    max_model_len: int = 4096  # prompt + response tokens per sequence (vLLM ends a longer one as "length")
    max_num_seqs: int = 256  # sequences decoded at once
    kv_cache_gib: float = 4.0  # KV-cache memory (GiB); on CPU the whole cache, on GPU a fixed size too
    # GPU: vLLM refuses to start unless this fraction of the device is free; next to the trainer, lower it
    # and cap JAX (XLA_PYTHON_CLIENT_MEM_FRACTION). Ignored on CPU.
    gpu_memory_utilization: float = 0.4
    enforce_eager: bool = True  # no torch.compile / CUDA graphs (faster start; weight reload safe)
    tensor_parallel_size: int = 1
    # compare an L2 checksum of every tensor handed to the engine with the JAX side's (checks the bridge's
    # names, casts and gathers, not vLLM's own loading; the tests probe that with logits)
    verify_sync: bool = False


@dataclass
class RolloutConfig:
    backend: str = "jax"  # jax (the JAX sampler on the trainer's weights) | vllm (an in-process vLLM engine)
    n: int = 8  # samples per prompt (judgments per pair in the GRM stage)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 2048  # max response length
    stop_token_ids: list[int] = field(default_factory=list)  # besides the tokenizer's eos, which always stops
    logprobs: str = "trainer"  # old log-probs: recomputed by the trainer, or taken from the sampler
    # JAX sampler: prompts that begin with the same image and tokens (a group's judge prompts) prefill that
    # prefix once; same tokens and log-probs as without (tests/rollout/test_shared_prefix.py)
    share_prefix: bool = True
    # JAX sampler: at most this many sequences (rows) decoding at once per device, in chunks of whole prompts
    # (a prompt's n samples stay together; same tokens and log-probs as one call); 0 = auto: the most that
    # fit in the device's memory beside the training state (grlhf.dry_run.rollout_rows_that_fit), every row
    # at once where the device's memory is unknown (CPU)
    max_rows: int = 0
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class KLInRewardConfig:
    """KL to the reference subtracted from the reward (PPO / InstructGPT style): verl's
    ``algorithm.use_kl_in_reward`` (``enabled``), ``algorithm.kl_ctrl`` (``type``, ``coef``, ``target_kl``,
    ``horizon``) and ``algorithm.kl_penalty`` (``kl_type``). Per token ``kl_t`` of the rollout's (old)
    log-probs against the reference (no gradient); an outcome estimator's sequence reward is
    ``score - coef * sum_t kl_t`` (``grlhf.rl.kl_control``). The adaptive controller updates ``coef`` after
    each step: ``coef * (1 + clip(kl / target_kl - 1, -0.2, 0.2) * batch / horizon)``.

    Independent of the KL loss (``algorithm.kl_coef``), as in verl: with both on, the policy pays the KL
    twice, once in the reward and once in the loss (verl's GRPO recipe uses the loss only).
    """

    enabled: bool = False
    type: str = "fixed"  # fixed | adaptive (rl/kl_control.py KL_CONTROLLERS)
    coef: float = 0.001  # the initial coefficient (verl's kl_ctrl.kl_coef)
    target_kl: float = 0.1  # adaptive: the KL per token the controller steers to
    horizon: int = 10000  # adaptive: sequences over which a full correction is made
    kl_type: str = "kl"  # the estimator (rl/kl.py KL_KINDS); verl's default k1


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"  # grpo | drgrpo (no std normalisation) | rloo (rl/advantages.py ADVANTAGES)
    norm_adv_by_std: bool = True
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0  # dual clip for negative advantages
    loss_agg_mode: str = "token-mean"  # rl/losses.py AGG_MODES
    # KL loss to the frozen reference (0 disables the reference model, unless kl_in_reward needs it)
    kl_coef: float = 0.02
    kl_type: str = "low_var_kl"  # the KL loss's estimator (rl/kl.py KL_KINDS)
    kl_in_reward: KLInRewardConfig = field(default_factory=KLInRewardConfig)
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    mini_batch_size: int = 0  # sequences per optimizer update; 0 = the whole rollout batch
    micro_batch_size: int = 8  # sequences per forward/backward (gradients accumulated exactly)


@dataclass
class JudgeBackendConfig:
    """Where the GRM's judgments are generated in stage 2."""

    # jax (the JAX sampler) | vllm (an in-process engine, settings in rollout.vllm) | remote (an
    # OpenAI-compatible endpoint, e.g. a fleet of `vllm serve` replicas behind one URL)
    backend: str = "jax"
    url: Optional[str] = None  # remote: the server's base URL, e.g. http://judge:8000
    model: Optional[str] = None  # remote: the served model name (default: reward.judge_path)
    max_concurrency: int = 16  # remote: requests in flight
    timeout: float = 120.0  # remote: seconds per request
    max_retries: int = 4  # remote: retries of a failed request (connection errors, 429, 5xx) with backoff
    # remote: the environment variable holding the endpoint's API key (sent as Authorization: Bearer; the key
    # itself is never in the config, a file or a log); None: no key
    api_key_env: Optional[str] = None
    # remote: send vLLM-only request fields (top_k, stop_token_ids, return_token_ids); false for other
    # OpenAI-compatible servers, which may reject them
    vllm_extras: bool = True


@dataclass
class RewardConfig:
    template: str = "paper"  # paper | compact | minimal | a literal template with {prompt} {response_1} {response_2}
    principles: bool = False  # show the dataset's principles in the judge prompt (Table 3 ablation)
    rule: str = "binary"  # binary (released code: 1/0) | signed (paper text: +1/-1)
    # GRM RL: show each pair of a step in both orders (batch_size / 2 pairs), so a position preference gets
    # no net gradient; false: one random order per pair (batch_size pairs)
    balanced_orders: bool = True
    # stage 2: where the policy's rewards come from
    # grm (grouped comparison) | grm_single (one random opponent) | rm (score-only baseline, stage=rm)
    # | oracle (synthetic truth)
    source: str = "grm"
    judge_path: Optional[str] = None  # the GRM's HF directory (stage 2 with a grm source)
    rm_path: Optional[str] = None  # the score-only reward model's directory (stage=rm's <run>/hf/rm)
    both_orders: bool = True  # judge every ordered pair (the paper's formula) or each pair once (released code)
    judge_samples: int = 1  # 1: greedy judgments; m > 1: m sampled judgments averaged
    judge_temperature: float = 1.0
    judge_max_tokens: int = 512
    judge_batch: int = 256  # judge prompts per generate call
    incomplete_score: float = 0.0  # reward of an answer with no stop token (excluded from comparisons)
    # stage 2's self-praise monitor: phrases of an answer about its own quality, matched in its tail
    # (empty: grlhf.reward.monitors.SELF_PRAISE_PHRASES)
    self_praise_phrases: list[str] = field(default_factory=list)
    judge: JudgeBackendConfig = field(default_factory=JudgeBackendConfig)


@dataclass
class OptimizerConfig:
    lr: float = 1e-6
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0


@dataclass
class SFTConfig:
    """Supervised warm start on judgment traces (``stage=sft``, or before ``grm`` when ``steps > 0``)."""

    steps: int = 0
    batch_size: int = 16
    micro_batch_size: int = 16
    # batches of examples of similar length (transformers' group_by_length: sorted within megabatches of
    # 50 batches, the batches shuffled), so that short examples are not padded to long ones' bucket
    group_by_length: bool = False
    lr: float = 1e-5
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | constant: the supervised phases' own (optimizer.schedule is RL's)
    max_length: int = 4096
    eval_every: int = 0  # 0: evaluate before and after the warm start only
    # GRM warm start on the synthetic task: this fraction of its examples are the pair's question answered
    # directly (image + question -> the right answer) instead of a judgment trace; the traces state the
    # right answer too, but the short direct examples teach a small model to see much faster
    answer_fraction: float = 0.0
    # GRM warm start on the synthetic task: first this many steps of the pairs' questions answered directly and
    # nothing else (its own phase, ``sft_answers``, with its own schedule at ``lr``), then ``steps`` of the mix.
    # A model that has never seen an image learns to see from these short examples at about a third of a
    # trace step's cost (on the embedded default's task 300 of them take it to 100% right answers).
    # Preference files have no direct answers: with data.source=files the phase is left out (logged)
    answer_steps: int = 0


@dataclass
class MeshConfig:
    data: int = 1
    fsdp: int = -1  # -1: all remaining devices
    tp: int = 1


@dataclass
class DistributedConfig:
    """Multi-process runs: ``jax.distributed.initialize`` from these or from the environment."""

    enabled: bool = False  # also turned on by JAX_COORDINATOR_ADDRESS in the environment
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


@dataclass
class TrainerConfig:
    stage: str = "grm"  # sft | grm | policy | rm | pipeline
    steps: int = 0  # RL steps; 0 = epochs over the training set
    epochs: int = 2
    batch_size: int = 8  # prompts (pairs) per RL step
    eval_every: int = 0  # 0: only before and after training
    seed: int = 0
    run_dir: Optional[str] = None  # default runs/<stage>-<time>
    dry_run: bool = False  # build the abstract model, sharding plan and data pipeline; no weights
    resume: bool = False  # continue the run in run_dir (which must exist) from its checkpoints
    # resume even though keys that change the math differ from the run's last config (trainer/resume.py)
    allow_config_change: bool = False
    max_bad_steps: int = 3  # consecutive non-finite losses before the run stops
    export_hf: bool = True  # export the trained model as an HF directory at the end
    mesh: MeshConfig = field(default_factory=MeshConfig)


@dataclass
class CheckpointConfig:
    every: int = 50  # steps; 0: only at the end
    # also save once this many seconds have passed since the phase's last save (0: by steps only): a
    # bound on the work a crash loses that does not depend on how fast a step is
    interval_s: float = 0.0
    keep: int = 3
    async_save: bool = True


@dataclass
class LoggingConfig:
    jsonl: bool = True
    tensorboard: bool = True
    progress: bool = True
    samples: int = 2  # example rollouts per RL step written to samples.jsonl (prompt, response, reward)
    # trace this many steps of every phase (jax.profiler + a host profile) into <run>/profile/<phase>/,
    # starting after profile_from steps (past the first steps' compiles); 0: no profile
    profile_steps: int = 0
    profile_from: int = 5


@dataclass
class PipelineConfig:
    """Per-stage ``key=value`` overrides, applied whenever that stage runs (alone, or as a step of
    ``trainer.stage=pipeline``) after the YAML files and before the command line. ``grm`` also serves
    ``sft`` (the GRM's warm start)."""

    grm: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    # where the pipeline's policy starts: base (model.path, as the paper: both stages from one pretrained
    # VLM) | grm_warm_start (the GRM's warm-start weights: the tiny checkpoint is untrained, and the GRM's
    # warm start is where it learns to see the synthetic world, standing in for a VLM's pretraining)
    policy_init: str = "base"
    # after both stages (synthetic data): judge table, point-wise correlation and policy table in report.md
    # (grlhf.eval on held-out data; the pipeline's judge budget and buckets)
    evaluate: bool = True
    eval_scored_questions: int = 16  # point-wise: held-out questions with 4 answers each


@dataclass
class ExperimentConfig:
    """``experiment=n_scaling`` (shorthand for ``experiment.name``): stage 2 from one warm start for each n,
    arm and seed (``grlhf.trainer.experiments``)."""

    name: Optional[str] = None  # n_scaling | None (a plain run)
    # each seed s re-runs stage 2 with trainer.seed=s and data.seed=s (its sampling, prompts and held-out
    # set); the GRM, the RM and the policy's warm start are trained once
    seeds: list[int] = field(default_factory=lambda: [0])
    n_values: list[int] = field(default_factory=lambda: [2, 3, 5, 8])  # answers per prompt (rollout.n)
    # reward.source of each arm: grm (grouped comparison) | grm_single (one opponent) | rm (score-only RM,
    # trained here unless reward.rm_path is set) | oracle (the synthetic truth, an upper bound)
    arms: list[str] = field(default_factory=lambda: ["grm", "grm_single", "rm"])


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


__all__ = ["ModelConfig", "DataConfig", "VLLMConfig", "RolloutConfig", "KLInRewardConfig", "AlgorithmConfig",
           "JudgeBackendConfig", "RewardConfig", "OptimizerConfig", "SFTConfig", "MeshConfig", "DistributedConfig",
           "TrainerConfig", "CheckpointConfig", "LoggingConfig", "PipelineConfig", "ExperimentConfig", "Config"]
