"""``trainer.dry_run=true``: the abstract model, the sharding plan and the data pipeline, without weights.

Reads only the model's ``config.json`` (``configs/models/*`` hold the published ones), builds the model
with ``nnx.eval_shape`` (shapes and dtypes, nothing allocated), applies the partition rules of
``sharding.py`` on an ``AbstractMesh`` of the configured size (no devices needed) and estimates the
memory each device needs for one training step. Data files are looked up, not loaded.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from grlhf.config import Config, ConfigError, check_mesh
from grlhf.data.batching import response_window_width
from grlhf.data.loaders import PromptFields, list_files, pair_fields
from grlhf.models.qwen_vl.config import QwenVLConfig
from grlhf.models.qwen_vl.model import QwenVLForConditionalGeneration
from grlhf.models.qwen_vl.projections import written_backward
from grlhf.models.qwen_vl.hf_params import path_to_str
from grlhf.models.qwen_vl.remat import REMAT_POLICIES
from grlhf.models.qwen_vl.sharding import MESH_AXES, partition_spec
from grlhf.tiny import resolve_model_path

GiB = 1024**3
RL_STAGES = ("grm", "policy", "pipeline")  # stages that sample rollouts and may keep a frozen reference
ADVICE = {"training step": "lower algorithm.micro_batch_size or the sequence length, or shard over more devices",
          "rollout": "lower rollout.max_tokens or the prompt length, or shard over more devices (the resident "
                     "training state alone does not fit beside one prompt's rows)"}


def model_dir(cfg: Config) -> Path:
    """``model.path`` resolved (``tiny`` / ``tiny:<family>`` is the cached tiny checkpoint)."""
    return resolve_model_path(cfg.model.path, cfg.model.tiny_seed)


def abstract_params(config: QwenVLConfig, param_dtype: str = "float32") -> tuple[tuple[str, Any], ...]:
    """``(dotted path, ShapeDtypeStruct)`` of every parameter, from ``nnx.eval_shape`` (nothing allocated;
    cached: tracing the constructor of a 3B model takes seconds). The compute dtype, remat and the
    attention kernel do not change the parameters."""
    return _abstract_params(config, jnp.dtype(param_dtype).name)


@functools.lru_cache(maxsize=8)
def _abstract_params(config: QwenVLConfig, param_dtype: str) -> tuple[tuple[str, Any], ...]:
    def build():
        return QwenVLForConditionalGeneration(config, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(param_dtype))

    state = nnx.state(nnx.eval_shape(build), nnx.Param)
    return tuple((path_to_str(k), v.get_value()) for k, v in nnx.to_flat_state(state))


def param_counts(params: dict[str, Any]) -> dict[str, int]:
    """Totals by part: ``params`` maps dotted paths to arrays (or ``ShapeDtypeStruct``s)."""
    size = lambda prefix: sum(math.prod(v.shape) for k, v in params.items() if k.startswith(prefix))  # noqa: E731
    return {"total": size(""), "vision tower": size("model.visual."), "language model": size("model.language_model."),
            "embedding": size("model.language_model.embed_tokens."), "lm_head": size("lm_head.")}


def device_count_for(cfg: Config, device_count: Optional[int] = None) -> int:
    """``device_count``, else the mesh's product when all its sizes are explicit, else ``jax.device_count()``."""
    mesh = cfg.trainer.mesh
    if device_count is not None:
        return device_count
    return mesh.data * mesh.fsdp * mesh.tp if mesh.fsdp > 0 else jax.device_count()


def abstract_mesh(shape) -> AbstractMesh:
    """A ``(data, fsdp, tp)`` mesh of ``shape`` without devices (the partition rules need only its sizes)."""
    return AbstractMesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def sharding_plan(params: dict[str, Any], mesh: AbstractMesh) -> list[dict]:
    """Per parameter: shape, dtype, PartitionSpec and per-device shard shape, largest first."""
    plan = []
    for path, leaf in params.items():
        spec = partition_spec(path, leaf.shape, mesh)
        ways = [math.prod(mesh.shape[a] for a in ((e,) if isinstance(e, str) else e or ())) for e in spec]
        shard = tuple(d // w for d, w in zip(leaf.shape, ways + [1] * (len(leaf.shape) - len(ways))))
        plan.append(dict(path=path, shape=tuple(leaf.shape), dtype=jnp.dtype(leaf.dtype), spec=spec, shard=shard,
                         shard_bytes=math.prod(shard) * jnp.dtype(leaf.dtype).itemsize))
    return sorted(plan, key=lambda p: -math.prod(p["shape"]))


def step_shape(cfg: Config) -> tuple[int, int, int]:
    """``(sequences per optimizer step, sequences per micro-batch, tokens per sequence)`` of the stage.

    Sequences are padded to a length bucket, and one longer than the largest bucket is an error, so the
    largest bucket caps the length."""
    if cfg.trainer.stage == "sft":
        return cfg.sft.batch_size, cfg.sft.micro_batch_size, min(cfg.sft.max_length, max(cfg.data.length_buckets))
    rows = cfg.trainer.batch_size * (2 if cfg.trainer.stage == "rm" else cfg.rollout.n)
    return rows, cfg.algorithm.micro_batch_size, min(cfg.data.max_prompt_length + cfg.rollout.max_tokens,
                                                     max(cfg.data.length_buckets))


def xla_attention(cfg: Config) -> bool:
    """Whether the run's attention is the XLA formula (``[heads, seq, seq]`` scores) on the GPU the estimate
    is for: ``xla``, or ``auto`` in float32 (``auto`` is cuDNN flash attention on a GPU in bf16/fp16)."""
    impl = cfg.model.attention_impl
    return impl in ("xla", "xla_autodiff") or (impl == "auto" and jnp.dtype(cfg.model.dtype).itemsize > 2)


def layer_activations(cfg: Config, t, tp: int, batch: int, seq: int) -> int:
    """Bytes of one decoder layer's live activations for ``batch`` rows of ``seq`` tokens (what JAX saves for
    the backward: ``tests/test_dry_run.py``; heads and hidden units split over tp). With the written-out backward
    passes (``projections.written_backward``): ~10 hidden-sized tensors (the norms' inputs and scaled values, the
    projections' inputs, the attention's grouped queries and output, the residual), q/k/v, the MLP's gate and up,
    and with the XLA formula the float32 probabilities ``[batch, heads/tp, seq, seq]``. With autodiff
    (``xla_autodiff``): ~4 hidden-sized tensors, q/k/v, gate, up and their product, and per score element the
    float32 scores, masked scores, exponentials and probabilities and the probabilities in the compute dtype.
    (cudnn: flash attention, O(seq).)"""
    act = jnp.dtype(cfg.model.dtype).itemsize
    qkv = (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim
    written = written_backward(cfg.model.attention_impl)
    hidden_like, mlp, per_score = (10, 2, 4) if written else (4, 3, 4 * 4 + act)
    layer = batch * seq * (hidden_like * t.hidden_size + (qkv + mlp * t.intermediate_size) // tp) * act
    if xla_attention(cfg):
        layer += batch * -(-t.num_attention_heads // tp) * seq * seq * per_score
    return layer


def layer_kept(cfg: Config, t, tp: int, batch: int, seq: int, remat: str) -> int:
    """Bytes one decoder layer keeps for its backward pass under the ``remat`` policy (models/qwen_vl/remat.py):
    ``none`` all its activations (``layer_activations``); ``full`` its input; ``dots_no_batch`` also the outputs
    of its projections and MLP matmuls (q, k, v, o, gate, up, down); ``dots`` also, with the XLA formula, the
    attention's batched matmuls (float32 scores ``[batch, heads/tp, seq, seq]`` and ``P @ V``)."""
    if remat == "none":
        return layer_activations(cfg, t, tp, batch, seq)
    act, tokens = jnp.dtype(cfg.model.dtype).itemsize, batch * seq
    kept = tokens * t.hidden_size * act
    if remat in ("dots", "dots_no_batch"):
        qkv = (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim
        kept += tokens * ((qkv + 2 * t.intermediate_size) // tp + 2 * t.hidden_size) * act
    if remat == "dots" and xla_attention(cfg):
        heads = -(-t.num_attention_heads // tp)
        kept += batch * heads * seq * seq * 4 + tokens * heads * t.head_dim * act
    return kept


def activation_bytes(cfg: Config, t, tp: int, batch: int, seq: int, remat: str) -> int:
    """The decoder's activations for the backward pass: what every layer keeps, plus under a remat policy the
    one layer being recomputed at a time."""
    recompute = 0 if remat == "none" else layer_activations(cfg, t, tp, batch, seq)
    return t.num_hidden_layers * layer_kept(cfg, t, tp, batch, seq, remat) + recompute


def response_window(cfg: Config, seq: int) -> int:
    """Target columns per row whose logits the step computes (trainer/step.py ``response_positions``): the
    longest response rounded up to a power of two, at least 16, at most the row; a warm start's responses are
    bounded by the row only."""
    longest = seq if cfg.trainer.stage == "sft" else min(cfg.rollout.max_tokens, seq)
    return response_window_width(longest, seq)


def head_bytes(cfg: Config, t, tp: int, batch: int, seq: int) -> tuple[str, int]:
    """``(label, bytes)`` of the LM head in the loss: a reward model's score head holds none; ``model.loss_logits
    =rows`` the whole rows' logits (compute dtype + float32 gradient); otherwise the response windows' logits, ``model.head_chunk`` vocabulary columns at a time (float32 logits, their
    exponentials and gradient: 3 per element), or at once (compute dtype + float32 gradient)."""
    if cfg.trainer.stage == "rm":
        return "score head (last token only)", 0
    if cfg.model.loss_logits == "rows":
        return f"logits ({batch} x {seq} tokens, whole rows)", batch * seq * (t.vocab_size // tp) * (
            jnp.dtype(cfg.model.dtype).itemsize + 4)
    window = response_window(cfg, seq)
    rows = batch * window
    chunk = cfg.model.head_chunk
    if chunk:
        return (f"fused LM head ({batch} x {window} response positions, {min(chunk, t.vocab_size)} vocabulary "
                "columns at a time)", rows * min(chunk, t.vocab_size // tp) * 4 * 3)
    return f"logits ({batch} x {window} response positions)", rows * (t.vocab_size // tp) * (
        jnp.dtype(cfg.model.dtype).itemsize + 4)


def vision_bytes(cfg: Config, config: QwenVLConfig, remat: str) -> int:
    """The vision tower's activations for the largest patch bucket (the patches are replicated: the whole
    micro-batch's on each device), by the decoder layer's rule."""
    v, patches = config.vision, max(cfg.data.patch_buckets)
    act = jnp.dtype(cfg.model.dtype).itemsize
    block = patches * (6 * v.width + 3 * v.intermediate_size) * act
    if remat == "none":
        return v.depth * block
    kept = patches * v.width * act
    if remat in ("dots", "dots_no_batch"):
        kept += patches * (5 * v.width + 2 * v.intermediate_size) * act
    return v.depth * kept + block


def memory_estimate(cfg: Config, config: QwenVLConfig, plan: list[dict], mesh: AbstractMesh,
                    remat: Optional[str] = None) -> dict[str, int]:
    """Bytes per device of one training step, by part (a planning estimate, not a measurement; tested against
    XLA's ``memory_analysis`` of the compiled step in tests/test_dry_run.py). ``remat``: a policy other than
    ``model.remat``'s."""
    params = sum(p["shard_bytes"] for p in plan)
    t, tp = config.text, mesh.shape["tp"]
    remat = remat or cfg.model.remat
    _, micro, seq = step_shape(cfg)
    b = max(micro // (mesh.shape["data"] * mesh.shape["fsdp"]), 1)  # the batch splits over data x fsdp
    out = {"parameters": params,
           # the gradient accumulator and one micro-batch's gradients (trainer/step.py), in param_dtype
           "gradients": 2 * params,
           # AdamW mu and nu: optax keeps them in the parameters' dtype (float32 for param_dtype=float32)
           "optimizer (AdamW mu, nu)": 2 * params}
    if cfg.trainer.stage in RL_STAGES and (cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward.enabled):
        out["reference model"] = params  # a frozen copy, sharded like the policy (grlhf/trainer/stages.py)
    out[f"activations ({b} x {seq} tokens, remat={remat})"] = activation_bytes(cfg, t, tp, b, seq, remat)
    label, head = head_bytes(cfg, t, tp, b, seq)
    out[label] = head
    if cfg.data.patch_buckets:
        out["vision tower activations"] = vision_bytes(cfg, config, remat)
    return out


def remat_report(cfg: Config, config: QwenVLConfig, plan: list[dict], mesh: AbstractMesh) -> list[str]:
    """The training step's total per device under each ``model.remat`` policy."""
    totals = {name: sum(memory_estimate(cfg, config, plan, mesh, name).values()) for name in REMAT_POLICIES}
    return ["  by model.remat: " + ", ".join(f"{name} {_bytes(total)}" + (" (this run)" if name == cfg.model.remat
                                                                          else "") for name, total in totals.items())]


def rollout_rows(cfg: Config, mesh: AbstractMesh) -> int:
    """Rows (sequences) per device of the whole rollout batch: its prompts split over data x fsdp, ``n`` each."""
    return -(-cfg.trainer.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])) * cfg.rollout.n


def rollout_estimate(cfg: Config, config: QwenVLConfig, memory: dict[str, int], mesh: AbstractMesh,
                     rows: Optional[int] = None) -> dict[str, int]:
    """Bytes per device while sampling ``rows`` sequences per device at once (default: ``rollout.max_rows``;
    the whole rollout batch for 0 or more than it holds), in chunks of whole prompts (``max(rows // n, 1)``
    per device; grlhf/rollout/jax_sampler.py). The weights and optimizer state stay resident; the KV cache
    holds ``rows x (prompt bucket + max_tokens) x kv_heads / tp x head_dim`` per layer, keys and values,
    in ``model.dtype`` (``TextModel.init_cache``). The prefill fills one cache row per prompt, copied ``n``
    times (both live while copying); before that, one decoder layer's activations of the prompts (the
    training step's rule, no remat; with ``attention_impl=xla`` its scores) are live beside the prompts'
    cache, counted where they exceed the copies' cache."""
    t, tp = config.text, mesh.shape["tp"]
    act = jnp.dtype(cfg.model.dtype).itemsize
    prompt = min(cfg.data.max_prompt_length, max(cfg.data.length_buckets))
    slots = prompt + cfg.rollout.max_tokens
    per_seq = t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * slots * act
    per_seq //= tp if t.num_key_value_heads % tp == 0 else 1
    everything = rollout_rows(cfg, mesh)
    rows = min(rows or cfg.rollout.max_rows or everything, everything)
    prompts = max(rows // cfg.rollout.n, 1)
    rows = prompts * cfg.rollout.n
    layer = layer_activations(cfg, t, tp, 1, prompt)
    resident = ("parameters", "optimizer (AdamW mu, nu)", "reference model")
    out = {**{k: v for k, v in memory.items() if k in resident},
           f"KV cache ({rows} sequences x {slots} slots)": rows * per_seq,
           f"prefill: the prompts' KV cache before the {cfg.rollout.n} copies ({prompts} prompts)": prompts * per_seq}
    if prompts * layer > rows * per_seq:
        out[f"prefill activations ({prompts} x {prompt} tokens, one layer), beyond the copies' cache"] = (
            prompts * layer - rows * per_seq)
    return out


def rows_that_fit(cfg: Config, config: QwenVLConfig, memory: dict[str, int], mesh: AbstractMesh,
                  budget: Optional[float]) -> tuple[int, bool]:
    """``(rows, fits)``: the most rows per device (whole prompts' ``n``, at most the whole batch) whose
    ``rollout_estimate`` is within ``budget`` bytes, evened out over the chunks they take, and whether it
    is (when not even one prompt's rows fit: ``(n, False)``). ``budget`` None (the device's memory
    unknown): the whole batch."""
    everything = rollout_rows(cfg, mesh)
    if budget is None:
        return everything, True
    n = cfg.rollout.n
    total = lambda rows: sum(rollout_estimate(cfg, config, memory, mesh, rows).values())  # noqa: E731
    if total(everything) <= budget:
        return everything, True
    low, high = 0, everything // n  # prompts per device: low fits (0 trivially), high does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if total(middle * n) <= budget else (low, middle)
    if low < 1:
        return n, False
    chunks = -(-(everything // n) // low)
    return -(-(everything // n) // chunks) * n, True  # as many chunks, evened out: less memory, fewer shapes


def rollout_rows_that_fit(cfg: Config, config: QwenVLConfig, device_memory_bytes: Optional[float],
                          mesh_shape) -> int:
    """The JAX sampler's rows per device for ``rollout.max_rows=0`` (auto): the most that fit in
    ``device_memory_bytes`` beside the training state, by the dry run's estimate (``rows_that_fit``) on a
    mesh of ``mesh_shape`` (``(data, fsdp, tp)`` or a mapping of those axes); the whole rollout batch when
    the memory is unknown (None: CPU) or it fits."""
    mesh = abstract_mesh(tuple(mesh_shape[a] for a in MESH_AXES) if hasattr(mesh_shape, "keys") else mesh_shape)
    if device_memory_bytes is None:
        return rollout_rows(cfg, mesh)
    memory = memory_estimate(cfg, config, sharding_plan(dict(abstract_params(config, cfg.model.param_dtype)), mesh),
                             mesh)
    return rows_that_fit(cfg, config, memory, mesh, device_memory_bytes)[0]


def device_memory_bytes() -> Optional[int]:
    """The first local device's memory limit (``memory_stats()['bytes_limit']``); None where it is not
    reported (CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return (stats or {}).get("bytes_limit")


def count_rows(path: str) -> tuple[list[Path], int]:
    """The data files under ``path`` and their row count (parquet metadata, JSONL lines); raises if absent."""
    files = list_files(path)
    rows = 0
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.ParquetFile(f).metadata.num_rows
        else:
            with open(f, encoding="utf-8") as handle:
                rows += sum(1 for line in handle if line.strip())
    return files, rows


def data_report(cfg: Config) -> list[str]:
    """What the stage would load and how it batches it; absent files are reported, not fatal."""
    d, stage = cfg.data, cfg.trainer.stage
    lines, items = [], None
    if d.source == "synthetic":
        items = d.num_train
        lines.append(f"  source: synthetic ({d.num_train} train / {d.num_eval} eval items, {d.image_size}px images)")
    else:
        columns = PromptFields().columns() if stage == "policy" else pair_fields(d.format).columns()
        lines.append(f"  source: files, format {d.format} (columns {', '.join(columns)})")
        for name, path in (("train", d.train_files), ("eval", d.eval_files)):
            if not path:
                lines.append(f"  {name}_files: not set")
                continue
            try:
                files, rows = count_rows(path)
            except (OSError, ValueError):
                lines.append(f"  {name}_files: {path}: not found (dry run)")
                continue
            lines.append(f"  {name}_files: {path}: {len(files)} file(s), {rows} rows (before bad-row filtering)")
            items = rows if name == "train" else items
    rows, micro, seq = step_shape(cfg)
    mini = rows if stage == "sft" else (cfg.algorithm.mini_batch_size or rows)
    epochs = 1 if stage == "sft" else cfg.algorithm.ppo_epochs
    batch = cfg.sft.batch_size if stage == "sft" else cfg.trainer.batch_size
    unit = {"sft": "traces", "grm": "pairs", "rm": "pairs"}.get(stage, "prompts")
    lines.append(f"  per step: {batch} {unit} -> {rows} sequences of <= {seq} tokens; {rows // mini * epochs} "
                 f"update(s) of {mini}; {rows // micro * epochs} micro-batches of {micro}")
    if stage in ("sft", "grm") and cfg.sft.answer_steps and d.source == "synthetic":
        lines.append(f"  first: {cfg.sft.answer_steps} steps of {cfg.sft.batch_size} questions answered directly "
                     "(sft.answer_steps)")
    if stage != "sft" and cfg.sft.steps:
        lines.append(f"  before it: {cfg.sft.steps} SFT warm-start steps of {cfg.sft.batch_size} traces")
    if max(d.length_buckets) < d.max_prompt_length + cfg.rollout.max_tokens and stage != "sft":
        lines.append(f"  note: sequences are capped at the largest length bucket {max(d.length_buckets)} < "
                     f"max_prompt_length + max_tokens = {d.max_prompt_length + cfg.rollout.max_tokens}")
    if stage == "sft":
        steps = str(cfg.sft.steps)
    elif cfg.trainer.steps:
        steps = str(cfg.trainer.steps)
    elif items is None:
        steps = f"unknown until the data is found ({cfg.trainer.epochs} epochs)"
    else:  # as grlhf/trainer/stages.py: epochs x full batches per epoch
        steps = f"{cfg.trainer.epochs * max(items // batch, 1)} ({cfg.trainer.epochs} epochs of {items // batch})"
    lines.append(f"  steps: {steps}")
    return lines


def _fmt(count: int) -> str:
    return f"{count / 1e9:.3f}B" if count >= 1e8 else f"{count / 1e6:.3f}M"


def _bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.2f} MiB"


def rollout_advice(cfg: Config, config: QwenVLConfig, memory: dict[str, int], mesh: AbstractMesh, budget: float,
                   device_memory_gib: float, over: bool) -> list[str]:
    """The rollout's rows per device, and when they do not fit the ``rollout.max_rows`` that does."""
    everything, configured = rollout_rows(cfg, mesh), cfg.rollout.max_rows
    rows = max(min(configured or everything, everything) // cfg.rollout.n, 1) * cfg.rollout.n
    chunks = -(-everything // rows)
    lines = [f"  rows: {rows} of the batch's {everything} per device at once, {chunks} chunk(s) (rollout.max_rows="
             + (f"{configured})" if configured else "0: auto, all of them where the device's memory is unknown)")]
    if not over:
        return lines
    fit, fits = rows_that_fit(cfg, config, memory, mesh, budget)
    need = sum(rollout_estimate(cfg, config, memory, mesh, rows).values())
    if not fits:
        return lines + [f"  WARNING: the rollout needs ~{need / GiB:.1f} GiB per device, more than "
                        f"{device_memory_gib:g} GiB, even one prompt at a time; {ADVICE['rollout']}"]
    under = sum(rollout_estimate(cfg, config, memory, mesh, fit).values())
    return lines + [f"  WARNING: the rollout needs ~{need / GiB:.1f} GiB per device, more than {device_memory_gib:g} "
                    f"GiB; set rollout.max_rows={fit} (~{under / GiB:.1f} GiB, {-(-everything // fit)} chunks; "
                    f"rollout.max_rows=0, auto, picks it on a device of {device_memory_gib:g} GiB)"]


def dry_run(cfg: Config, device_count: Optional[int] = None, device_memory_gib: float = 80.0, top: int = 6) -> str:
    """The dry-run report (the caller prints it); ``device_memory_gib`` is the budget warned against."""
    directory = model_dir(cfg)
    config = QwenVLConfig.from_pretrained(directory)
    params = dict(abstract_params(config, cfg.model.param_dtype))
    counts = param_counts(params)
    lines = [f"dry run: stage {cfg.trainer.stage}, model {cfg.model.path} ({config.architecture}, {directory})",
             f"  dtype {cfg.model.dtype}, param_dtype {cfg.model.param_dtype}, remat {cfg.model.remat}, "
             f"attention {cfg.model.attention_impl}, tied embeddings {config.tie_word_embeddings}",
             "parameters:"]
    lines += [f"  {name}: {_fmt(n)} ({n:,})" for name, n in counts.items() if n or name != "lm_head"]
    devices = device_count_for(cfg, device_count)
    lines.append("mesh:")
    try:
        shape = check_mesh(cfg, devices)
    except ConfigError as error:
        lines += [f"  ERROR for {devices} device(s): {error}", "  (sharding plan and memory estimate skipped)",
                  "data:", *data_report(cfg)]
        return "\n".join(lines)
    mesh = abstract_mesh(shape)
    lines.append(f"  {devices} device(s): " + ", ".join(f"{a}={n}" for a, n in zip(MESH_AXES, shape)))
    plan = sharding_plan(params, mesh)
    lines.append(f"largest parameters (of {len(plan)}):")
    for p in plan[:top]:
        lines.append(f"  {p['path']}: {p['shape']} {p['dtype'].name} {p['spec']} -> per device {p['shard']}")
    memory = memory_estimate(cfg, config, plan, mesh)
    phases = [("training step", memory)]
    if cfg.trainer.stage in RL_STAGES:
        phases.append(("rollout", rollout_estimate(cfg, config, memory, mesh)))
    budget = device_memory_gib * GiB
    for phase, parts in phases:
        total = sum(parts.values())
        lines.append(f"memory per device, {phase} (estimate):")
        lines += [f"  {name}: {_bytes(value)}" for name, value in parts.items()]
        over = total > budget
        lines.append(f"  total: {_bytes(total)} of {device_memory_gib:g} GiB" + ("  ** OVER **" if over else ""))
        if phase == "training step":
            lines += remat_report(cfg, config, plan, mesh)
        if phase == "rollout":
            lines += rollout_advice(cfg, config, memory, mesh, budget, device_memory_gib, over)
        elif over:
            lines.append(f"  WARNING: the {phase} needs ~{total / GiB:.1f} GiB per device, more than "
                         f"{device_memory_gib:g} GiB; {ADVICE[phase]}")
    if not cfg.data.patch_buckets:
        lines.append("  (vision tower activations not counted: set data.patch_buckets)")
    lines += ["data:", *data_report(cfg)]
    return "\n".join(lines)


__all__ = ["abstract_params", "activation_bytes", "data_report", "device_memory_bytes", "dry_run", "head_bytes",
           "memory_estimate", "param_counts", "remat_report", "rollout_estimate", "rollout_rows",
           "rollout_rows_that_fit", "rows_that_fit", "sharding_plan"]
