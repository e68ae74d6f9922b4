"""Benchmark grlhf against transformers in one process on a GPU (issue 16 §5): the train step, sampling and the
weight bridge of a Qwen2.5-VL-3B-shaped model, bf16, with the ratios printed side by side.

The model is ``configs/models/qwen2.5-vl-3b-instruct/config.json`` cut to ``--layers`` text layers and
``--vision-depth`` vision blocks (default 12 and 8, 1.43 B parameters: the configuration of issue 16;
``--layers 36 --vision-depth 32`` is the full 3B). The vision tower keeps full attention in the last block
of every 8 (every ``depth // 2`` below 16 blocks: ``[3, 7]`` at depth 8; ``--fullatt-blocks`` overrides).
``--hidden``, ``--heads``, ``--kv-heads``, ``--intermediate``, ``--vocab`` and ``--vision-*`` shrink it for a
CPU smoke run.
transformers builds it with random weights on the device in ``--dtype``, ``save_pretrained`` writes it to a
temporary directory and ``grlhf.models.qwen_vl.from_pretrained`` loads the same weights
(``attention_impl=--attention``, ``remat=--remat``).

Rows: ``--batch`` rows of ``--seq`` tokens, each with one ``--image`` x ``--image`` image (448: 1024 patches,
256 image tokens) after 8 prompt tokens, as processor-shaped arrays built here (vision start / end tokens,
``mm_token_type_ids``, random ``pixel_values``). Parts (``--parts``, default all):

step     one training step, forward + backward, loss = mean NLL of the last ``--loss-tokens`` tokens of
         each row. grlhf: ``jax.jit(jax.value_and_grad(loss))`` over the ``nnx.Param`` state of the trainer's
         own loss, ``trainer.step.loss_sums`` (``kind="sft"``: the token-mean NLL) on a ``TrainBatch`` whose
         response windows are the loss positions: the hidden states there and the LM head fused,
         ``--vocab-chunk`` columns at a time (``--head full``: no windows, the whole rows' logits, the path
         before issue 16). transformers: ``model(**rows)``
         (sdpa), ``log_softmax`` + ``gather`` of the same tokens, ``.backward()`` (``--torch-logits loss``:
         ``logits_to_keep`` = the loss positions + 1). Reported: time, tokens/s, model TFLOP/s, the loss of
         both, peak memory: ``torch.cuda.max_memory_allocated`` of the step; XLA's ``memory_analysis()`` of
         the compiled step (arguments + temporaries + outputs); ``device.memory_stats()['peak_bytes_in_use']``
         (the JAX process peak so far; "n/a" where the backend has none, e.g. CPU).
sample   ``--prompts`` prompts of ``--prompt-len`` tokens (one image each), ``--n`` samples of exactly
         ``--max-tokens`` new tokens each, temperature 1: ``rollout.jax_sampler.JaxSampler.generate`` (no stop
         ids; the host-side ``model.prepare`` of the prompts included, as in a run) against transformers
         ``generate(do_sample=True, num_return_sequences=n, min_new_tokens=max_new_tokens)``; both also with
         one new token, which splits off the prefill: per decode step = (time - time of 1 token) /
         (max_tokens - 1), against the HBM floor = the bytes of all weights read once / ``--hbm-tbps``
         (4.8 TB/s on an H200).
bridge   ``bridge.push_weights`` (every parameter to torch in the HF layout, ``--dtype``, consumer a no-op)
         against a device-to-device copy of the same bytes: ``torch.clone`` of each exported tensor (on the
         GPU: a cuda copy) and, for reference, a jitted JAX copy of the parameters.

Model FLOPs of one step (fwd + bwd), the formula of ``../shared/spec/gpu.md``:
    6 * tokens * (text matmul params + lm_head params)  +  6 * B * layers * seq^2 * heads * head_dim  (causal
    attention: QK^T and AV, half the square)  +  6 * patches * vision matmul params
where the text matmul params are the decoder layers' 2-D weights, the lm_head's is vocab * hidden (counted at
every token, tied or not), the vision matmul params are the 2-D weights of the blocks and the merger and the
patch embedding (the merger's FLOPs are so overstated 4x, as it runs on 2x2-merged tokens: ~1% of the total,
kept so the figures compare with issue 16's; 136 TFLOP per step at the default configuration). Vision
attention is left out (small). MFU = TFLOP/s / ``--peak-tflops`` (989: H200 dense bf16).

Timing: a warm-up call each (compiles), then ``--repeats`` interleaved rounds (a ``--pause`` before each
call), medians; every call waits for its device (``block_until_ready`` / ``torch.cuda.synchronize``).
Ratios: of speed, transformers time / grlhf time (> 1: grlhf faster); of memory, to the HBM floor and to the
device copy, grlhf's figure / the reference's (< 1: grlhf better). Each is printed beside issue 16's goal.

One process holds both frameworks: JAX preallocates 75% of the card unless told otherwise, which leaves
torch too little. Set ``XLA_PYTHON_CLIENT_MEM_FRACTION``: transformers' 12-layer step peaks at 49.6 GiB
(issue 16), so 0.55 (76 GiB for JAX of the H200's 139) leaves it room; or ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
(JAX allocates as it goes). A grlhf step that does not fit its fraction fails with XLA's out-of-memory error,
which is itself the finding (the goal is a peak at or below transformers'). The full 3B (36 layers) at batch
8 is not expected to fit twice on one card (transformers alone would need ~3x its 12-layer peak): use
``--batch 2``. It needs only jax, flax, torch and transformers (no omegaconf, vLLM or tensorboardX). On the
H200 image, from the repository root (about 3 minutes expected, mostly compiles):

    XLA_PYTHON_CLIENT_MEM_FRACTION=0.55 PYTHONPATH=. python3 bench/gpu_step.py --json gpu_step.json
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.55 PYTHONPATH=. python3 bench/gpu_step.py --parts step --remat dots
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.55 PYTHONPATH=. python3 bench/gpu_step.py --layers 36 --vision-depth 32 --batch 2

CPU smoke run (float32, a few seconds a part):

    .venv/bin/python bench/gpu_step.py --layers 2 --vision-depth 2 --seq 128 --image 56 --batch 2 \\
        --loss-tokens 32 --dtype float32 --hidden 256 --heads 4 --kv-heads 2 --intermediate 512 --vocab 4096 \\
        --vision-hidden 128 --vision-heads 2 --vision-intermediate 256 --prompts 2 --n 2 --max-tokens 8 \\
        --prompt-len 32 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, if not installed

from grlhf import bridge  # noqa: E402
from grlhf.models.qwen_vl import from_pretrained  # noqa: E402
from grlhf.models.qwen_vl.remat import REMAT_POLICIES  # noqa: E402
from grlhf.rollout.base import SamplingParams  # noqa: E402
from grlhf.rollout.jax_sampler import JaxSampler  # noqa: E402
from grlhf.trainer.step import LossConfig, TrainBatch, loss_sums, response_positions  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "models", "qwen2.5-vl-3b-instruct", "config.json")
PARTS = ("step", "sample", "bridge")

PATCH, MERGE, TEMPORAL = 14, 2, 2
PROMPT_TOKENS = 8  # text before the image in every row
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id",
               "image_token_id", "video_token_id")
GIB = 2**30


# ---------------------------------------------------------------- configuration and inputs
def full_attention_blocks(depth: int) -> list[int]:
    """The vision blocks with full attention: the last of every 8 (Qwen2.5-VL-3B's 7, 15, 23, 31), every
    ``depth // 2`` below 16 blocks (``[3, 7]`` at 8, ``[1]`` at 2), so a cut tower keeps windows and full blocks."""
    period = 8 if depth >= 16 else max(2, depth // 2)
    return [i for i in range(depth) if (i + 1) % period == 0]


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's 16/24/24 split of the rotary half-dimension (t, h, w), scaled to ``head_dim``."""
    half = head_dim // 2
    if head_dim % 16:
        raise ValueError(f"head dim {head_dim} must be a multiple of 16 for the M-RoPE split")
    return [half // 4, 3 * half // 8, 3 * half // 8]


def hf_config(args):
    """The transformers config: the 3B config file cut and resized by the flags."""
    from transformers import Qwen2_5_VLConfig

    with open(args.config) as f:
        raw = json.load(f)
    vision = raw["vision_config"]
    raw["num_hidden_layers"] = args.layers
    vision["depth"] = args.vision_depth
    vision["fullatt_block_indexes"] = (args.fullatt_blocks if args.fullatt_blocks is not None
                                       else full_attention_blocks(args.vision_depth))
    if any(not 0 <= i < args.vision_depth for i in vision["fullatt_block_indexes"]):
        raise ValueError(f"--fullatt-blocks {vision['fullatt_block_indexes']} outside 0..{args.vision_depth - 1}")
    for key, flag in (("hidden_size", "hidden"), ("num_attention_heads", "heads"),
                      ("num_key_value_heads", "kv_heads"), ("intermediate_size", "intermediate")):
        if getattr(args, flag) is not None:
            raw[key] = getattr(args, flag)
    for key, flag in (("hidden_size", "vision_hidden"), ("num_heads", "vision_heads"),
                      ("intermediate_size", "vision_intermediate")):
        if getattr(args, flag) is not None:
            vision[key] = getattr(args, flag)
    vision["out_hidden_size"] = raw["hidden_size"]
    raw["rope_scaling"]["mrope_section"] = mrope_section(raw["hidden_size"] // raw["num_attention_heads"])
    if args.vocab is not None:  # the special tokens move to the top of the smaller vocabulary
        if args.vocab < 64:
            raise ValueError(f"--vocab {args.vocab} is too small (at least 64)")
        raw["vocab_size"] = args.vocab
        for offset, key in enumerate(SPECIAL_IDS, start=1):
            raw[key] = args.vocab - offset
    return Qwen2_5_VLConfig.from_dict(raw)


def image_grid(image: int) -> tuple[int, int, int]:
    if image % (PATCH * MERGE):
        raise ValueError(f"--image {image} must be a multiple of {PATCH * MERGE} pixels")
    return (1, image // PATCH, image // PATCH)


def special_ids(config) -> list[int]:
    """The special token ids of a config (top level and text config); random text is drawn below them all."""
    found = [getattr(c, key, None) for c in (config, config.text_config) for key in SPECIAL_IDS]
    return [i for i in found if isinstance(i, int)]


def make_rows(config, batch: int, seq: int, image: int, seed: int = 0) -> dict:
    """Processor-shaped numpy inputs: per row 8 prompt tokens, <vision_start>, the image's tokens, <vision_end>,
    then text up to ``seq``; one image per row, random pixels."""
    grid = image_grid(image)
    patches = int(np.prod(grid))
    image_tokens = patches // MERGE**2
    text_after = seq - PROMPT_TOKENS - image_tokens - 2
    if text_after < 1:
        raise ValueError(f"{seq} tokens are too few for a {image}px image ({image_tokens} tokens) and its prompt")
    rng = np.random.default_rng(seed)
    text_vocab = min(special_ids(config))
    rows = [np.concatenate([rng.integers(0, text_vocab, PROMPT_TOKENS), [config.vision_start_token_id],
                            np.full(image_tokens, config.image_token_id), [config.vision_end_token_id],
                            rng.integers(0, text_vocab, text_after)]) for _ in range(batch)]
    input_ids = np.stack(rows).astype(np.int64)
    patch_dim = 3 * TEMPORAL * PATCH * PATCH
    return dict(input_ids=input_ids, attention_mask=np.ones_like(input_ids),
                mm_token_type_ids=(input_ids == config.image_token_id).astype(np.int64),
                pixel_values=rng.standard_normal((batch * patches, patch_dim)).astype(np.float32),
                image_grid_thw=np.array([grid] * batch, np.int64))


# ---------------------------------------------------------------- FLOPs and bytes
def matmul_params(named_params) -> dict:
    """Parameters that enter matmuls, by part: the text decoder layers' 2-D weights, the vision tower's 2-D
    weights (blocks and merger) and its patch embedding; and every parameter's count and bytes."""
    out = dict(text=0, vision=0, total=0, bytes=0)
    for name, param in named_params:
        out["total"] += param.numel()
        out["bytes"] += param.numel() * param.element_size()
        if ".layers." in name and param.ndim == 2:
            out["text"] += param.numel()
        elif ".visual." in f".{name}" and (param.ndim == 2 or "patch_embed" in name):
            out["vision"] += param.numel()
    return out


def step_flops(params: dict, *, batch: int, seq: int, layers: int, heads: int, head_dim: int, hidden: int,
               vocab: int, patches: int) -> dict:
    """Model FLOPs of one fwd+bwd step (the module docstring's formula), by term."""
    tokens = batch * seq
    terms = dict(dense=6 * tokens * (params["text"] + vocab * hidden),
                 attention=6 * batch * layers * seq**2 * heads * head_dim,
                 vision=6 * patches * params["vision"])
    return dict(terms, total=sum(terms.values()))


def hbm_floor_s(weight_bytes: int, tbps: float) -> float:
    """The time to read every weight once from device memory at ``tbps`` TB/s."""
    return weight_bytes / (tbps * 1e12)


# ---------------------------------------------------------------- timing and memory
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable], repeats: int, pause: float) -> dict:
    """Each function's first call (compiles included), then ``repeats`` rounds calling each in turn after
    ``pause`` seconds; median and fastest per function."""
    out = {}
    for name, fn in fns.items():
        began = time.perf_counter()
        fn()
        out[name] = dict(first_s=time.perf_counter() - began, times_s=[])
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(pause)
            began = time.perf_counter()
            fn()
            out[name]["times_s"].append(time.perf_counter() - began)
    for rec in out.values():
        rec.update(median_s=statistics.median(rec["times_s"]), min_s=min(rec["times_s"]))
    return out


def jax_peak_bytes() -> Optional[int]:
    """``peak_bytes_in_use`` of the first JAX device (the process's peak so far); None where not reported."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def xla_memory(compiled) -> dict:
    """XLA's own sizes of a compiled program (bytes); empty where the backend reports none."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if analysis is None:
        return {}
    sizes = {key: int(getattr(analysis, f"{key}_size_in_bytes")) for key in ("argument", "temp", "output", "alias")}
    sizes["total"] = sizes["argument"] + sizes["temp"] + sizes["output"] - sizes["alias"]
    return sizes


def release_memory(hf) -> None:
    """Drop transformers' gradients and hand torch's cached blocks back to the device between parts (JAX may
    allocate them when it does not preallocate)."""
    hf.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f} GiB"


# ---------------------------------------------------------------- the model on both sides
def build_models(args, dtype_name: str):
    """transformers' random model on the torch device and grlhf's load of the same weights."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = hf_config(args)
    torch_dtype = getattr(torch, dtype_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    with torch.device(device):
        hf = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype)
    hf.set_attn_implementation(args.torch_attention)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = from_pretrained(tmp, dtype=jnp.dtype(dtype_name), param_dtype=jnp.dtype(dtype_name),
                                attention_impl=args.attention, remat=args.remat)
    return config, hf, model


def loss_batch(inputs, seq: int, batch: int, loss_tokens: int, head: str) -> TrainBatch:
    """The rows as the trainer's micro-batch: the last ``loss_tokens`` targets are the response; ``head=fused``
    gives it response windows (logits there only, the LM head fused), ``full`` none (whole rows' logits)."""
    mask = np.zeros((batch, seq - 1), np.float32)
    mask[:, -loss_tokens:] = 1.0
    positions = jnp.asarray(response_positions(mask)) if head == "fused" else None
    return TrainBatch(inputs, jnp.asarray(mask), positions=positions)


def jax_step(model, rows: dict, args) -> dict:
    """The jitted fwd+bwd over the parameters, compiled, with its loss and XLA's memory figures."""
    prepared = jax.device_put(jax.tree.map(np.asarray, model.prepare(**rows)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cfg = LossConfig(kind="sft", head_chunk=args.vocab_chunk)

    def loss_of_params(params, inputs):
        batch = loss_batch(inputs, args.seq, args.batch, args.loss_tokens, args.head)
        total, (denom, _) = loss_sums(nnx.merge(graphdef, params, rest), batch, cfg)
        return total / denom

    began = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss_of_params)).lower(params, prepared).compile()
    compile_s = time.perf_counter() - began
    value = float(compiled(params, prepared)[0])
    return dict(run=lambda: jax.block_until_ready(compiled(params, prepared)), loss=value, compile_s=compile_s,
                xla=xla_memory(compiled))


def torch_step(hf, rows: dict, args) -> dict:
    """transformers' fwd+bwd on the same rows, its loss, and the peak memory of one step (cuda only)."""
    device = next(hf.parameters()).device
    tensors = {k: torch.from_numpy(v).to(device) for k, v in rows.items()}
    tensors["pixel_values"] = tensors["pixel_values"].to(next(hf.parameters()).dtype)
    targets = tensors["input_ids"][:, -args.loss_tokens:]
    keep = dict(logits_to_keep=args.loss_tokens + 1) if args.torch_logits == "loss" else {}
    hf.train()  # no dropout in these models

    def loss_fn():
        logits = hf(**tensors, **keep).logits[:, -args.loss_tokens - 1:-1]
        return -torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).mean()

    def run():
        hf.zero_grad(set_to_none=True)
        value = loss_fn()
        value.backward()
        sync()
        return value.detach()

    value = float(run())
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run()
        peak = torch.cuda.max_memory_allocated()
    return dict(run=run, loss=value, peak_bytes=peak)


# ---------------------------------------------------------------- parts
def part_step(args, config, hf, model, report: dict) -> None:
    rows = make_rows(config, args.batch, args.seq, args.image, args.seed)
    patches = rows["pixel_values"].shape[0]
    text = config.text_config
    counts = matmul_params(hf.named_parameters())
    flops = step_flops(counts, batch=args.batch, seq=args.seq, layers=text.num_hidden_layers,
                       heads=text.num_attention_heads, head_dim=text.hidden_size // text.num_attention_heads,
                       hidden=text.hidden_size, vocab=text.vocab_size, patches=patches)
    j, t = jax_step(model, rows, args), torch_step(hf, rows, args)
    timed = interleaved({"grlhf": j["run"], "transformers": t["run"]}, args.repeats, args.pause)
    tokens = args.batch * args.seq
    out = dict(tokens=tokens, patches=patches, flops=flops, params=counts, head=args.head, remat=args.remat,
               attention=model.attention_impl, torch_logits=args.torch_logits, compile_s=j["compile_s"],
               loss=dict(grlhf=j["loss"], transformers=t["loss"],
                         rel_diff=abs(j["loss"] - t["loss"]) / max(abs(t["loss"]), 1e-30)),
               memory=dict(torch_peak_bytes=t["peak_bytes"], xla=j["xla"], jax_peak_bytes=jax_peak_bytes()))
    for side in ("grlhf", "transformers"):
        rec = timed[side]
        out[side] = dict(rec, tokens_per_s=tokens / rec["median_s"], tflops=flops["total"] / rec["median_s"] / 1e12)
        out[side]["mfu"] = out[side]["tflops"] / args.peak_tflops
    out["ratio_tokens_per_s"] = timed["transformers"]["median_s"] / timed["grlhf"]["median_s"]
    report["step"] = out

    print(f"\n== train step: {args.batch} x {args.seq} tokens ({tokens}), {patches} patches, loss over the last "
          f"{args.loss_tokens} tokens; grlhf head {args.head}, remat {args.remat}, attention "
          f"{model.attention_impl}; "
          f"transformers {args.torch_attention}, logits {args.torch_logits}")
    print(f"model FLOPs/step {flops['total'] / 1e12:.3f} T = 6*tokens*(text matmul {counts['text'] / 1e6:.1f}M + "
          f"lm_head {text.vocab_size * text.hidden_size / 1e6:.1f}M) {flops['dense'] / 1e12:.3f} T + causal "
          f"attention 6*B*layers*seq^2*heads*head_dim {flops['attention'] / 1e12:.3f} T + 6*patches*vision matmul "
          f"{counts['vision'] / 1e6:.1f}M {flops['vision'] / 1e12:.3f} T")
    print(f"{'':14s}{'median s':>10s}{'min s':>9s}{'1st call s':>11s}{'tokens/s':>11s}{'TFLOP/s':>9s}{'MFU':>7s}")
    for side in ("grlhf", "transformers"):
        r = out[side]
        print(f"{side:14s}{r['median_s']:10.4f}{r['min_s']:9.4f}{r['first_s']:11.2f}{r['tokens_per_s']:11.0f}"
              f"{r['tflops']:9.2f}{r['mfu']:7.1%}")
    xla = j["xla"]
    print(f"loss: grlhf {j['loss']:.6f}, transformers {t['loss']:.6f} (rel diff {out['loss']['rel_diff']:.1e}); "
          f"grlhf compile {j['compile_s']:.1f} s")
    print(f"peak memory: transformers max_memory_allocated {gib(t['peak_bytes'])}; XLA memory_analysis "
          + (f"{gib(xla['total'])} (arguments {gib(xla['argument'])} + temporaries {gib(xla['temp'])} + outputs "
             f"{gib(xla['output'])})" if xla else "n/a")
          + f"; JAX peak_bytes_in_use {gib(out['memory']['jax_peak_bytes'])}")


def part_sample(args, config, hf, model, report: dict) -> None:
    rows = make_rows(config, args.prompts, args.prompt_len, args.image, args.seed + 1)
    sampler = JaxSampler(model)  # no tokenizer and no stop ids: every row runs max_tokens
    seeds = iter(range(1, 10**6))

    def grlhf_fn(max_tokens: int) -> Callable:
        def run():
            out = sampler.generate(model.prepare(**rows), SamplingParams(
                n=args.n, temperature=1.0, top_p=1.0, top_k=0, max_tokens=max_tokens, stop_token_ids=(),
                seed=next(seeds)))
            if any(len(s.token_ids) != max_tokens for c in out for s in c):
                raise RuntimeError("grlhf stopped before max_tokens")
        return run

    device = next(hf.parameters()).device
    tensors = {k: torch.from_numpy(v).to(device) for k, v in rows.items()}
    tensors["pixel_values"] = tensors["pixel_values"].to(next(hf.parameters()).dtype)
    hf.eval()

    def hf_fn(max_tokens: int) -> Callable:
        def run():
            with torch.inference_mode():
                out = hf.generate(**tensors, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=max_tokens, min_new_tokens=max_tokens, num_return_sequences=args.n,
                                  pad_token_id=config.text_config.eos_token_id)
            sync()
            if out.shape != (args.prompts * args.n, args.prompt_len + max_tokens):
                raise RuntimeError(f"generate returned {tuple(out.shape)}")
        return run

    fns = {"grlhf": grlhf_fn(args.max_tokens), "transformers": hf_fn(args.max_tokens),
           "grlhf 1 token": grlhf_fn(1), "transformers 1 token": hf_fn(1)}
    timed = interleaved(fns, args.repeats, args.pause)
    rows_n = args.prompts * args.n
    tokens = rows_n * args.max_tokens
    weight_bytes = matmul_params(hf.named_parameters())["bytes"]
    floor = hbm_floor_s(weight_bytes, args.hbm_tbps)
    out = dict(rows=rows_n, tokens=tokens, weight_bytes=weight_bytes, hbm_floor_s=floor, hbm_tbps=args.hbm_tbps)
    for side in ("grlhf", "transformers"):
        full, one = timed[side], timed[f"{side} 1 token"]
        step = (full["median_s"] - one["median_s"]) / max(args.max_tokens - 1, 1)
        out[side] = dict(full, tokens_per_s=tokens / full["median_s"], prefill_plus_1_s=one["median_s"],
                         per_decode_step_s=step, decode_step_vs_floor=step / floor)
    out.update({name: rec for name, rec in timed.items() if name.endswith("1 token")})
    out["ratio_tokens_per_s"] = timed["transformers"]["median_s"] / timed["grlhf"]["median_s"]
    report["sample"] = out

    print(f"\n== sampling: {args.prompts} prompts of {args.prompt_len} tokens x n={args.n} x {args.max_tokens} new "
          f"tokens ({tokens} tokens, {rows_n} rows); HBM floor per decode step {floor * 1e3:.3f} ms "
          f"({weight_bytes / GIB:.2f} GiB of weights at {args.hbm_tbps} TB/s)")
    print(f"{'':14s}{'median s':>10s}{'1st call s':>11s}{'tokens/s':>11s}{'prefill+1 s':>12s}{'step ms':>9s}"
          f"{'x floor':>9s}")
    for side in ("grlhf", "transformers"):
        r = out[side]
        print(f"{side:14s}{r['median_s']:10.3f}{r['first_s']:11.2f}{r['tokens_per_s']:11.0f}"
              f"{r['prefill_plus_1_s']:12.3f}{r['per_decode_step_s'] * 1e3:9.3f}{r['decode_step_vs_floor']:9.1f}")


def part_bridge(args, config, hf, model, report: dict) -> None:
    torch_dtype = getattr(torch, args.dtype)
    exported: list[torch.Tensor] = []
    stats = bridge.push_weights(model, lambda bucket: exported.extend(t.clone() for _, t in bucket), dtype=torch_dtype)
    sync()
    params = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    jax_copy = jax.jit(lambda arrays: [jnp.copy(a) for a in arrays])

    def export():
        bridge.push_weights(model, lambda bucket: None, dtype=torch_dtype)
        sync()

    def torch_clone():
        copies = [t.clone() for t in exported]
        sync()
        return copies

    fns = {"export": export, "torch clone": torch_clone,
           "jax copy": lambda: jax.block_until_ready(jax_copy(params))}
    timed = interleaved(fns, args.repeats, args.pause)
    out = dict(bytes=stats.bytes, tensors=stats.tensors, buckets=stats.buckets, device=str(exported[0].device),
               **{name: rec for name, rec in timed.items()})
    out["ratio_export_vs_copy"] = timed["export"]["median_s"] / timed["torch clone"]["median_s"]
    out["ratio_export_vs_jax_copy"] = timed["export"]["median_s"] / timed["jax copy"]["median_s"]
    report["bridge"] = out

    mb = stats.bytes / 2**20
    print(f"\n== bridge: {stats.tensors} tensors, {mb:.1f} MiB in {args.dtype} on {out['device']}, "
          f"{stats.buckets} buckets")
    for name, rec in timed.items():
        print(f"{name:14s}{rec['median_s'] * 1e3:10.2f} ms{mb / 1024 / rec['median_s']:9.1f} GiB/s"
              f"  (1st call {rec['first_s'] * 1e3:.0f} ms)")


def ratio_rows(report: dict) -> list[dict]:
    """The summary: each figure as a ratio, with issue 16's goal for it on the H200 (``>=`` or ``<=``)."""
    rows = []

    def add(label: str, value: float, op: str, goal: float) -> None:
        rows.append(dict(label=label, value=value, goal=f"{op} {goal:g}",
                         met=value >= goal if op == ">=" else value <= goal))

    if "step" in report:
        s = report["step"]
        add("train step tokens/s, grlhf / transformers", s["ratio_tokens_per_s"], ">=", 1.3)
        add("train step MFU of grlhf (model FLOPs / --peak-tflops)", s["grlhf"]["mfu"], ">=", 0.55)
        mem = s["memory"]
        if mem["torch_peak_bytes"] and mem["jax_peak_bytes"]:
            add("step peak memory, JAX peak_bytes_in_use / transformers",
                mem["jax_peak_bytes"] / mem["torch_peak_bytes"], "<=", 1.0)
        if mem["torch_peak_bytes"] and mem["xla"]:
            add("step memory, XLA memory_analysis total / transformers peak",
                mem["xla"]["total"] / mem["torch_peak_bytes"], "<=", 1.0)
    if "sample" in report:
        s = report["sample"]
        add("sampling tokens/s, grlhf / transformers generate", s["ratio_tokens_per_s"], ">=", 8.0)
        add("grlhf decode step / HBM weight-read floor", s["grlhf"]["decode_step_vs_floor"], "<=", 2.0)
    if "bridge" in report:
        add("bridge export / device copy of the same bytes", report["bridge"]["ratio_export_vs_copy"], "<=", 3.0)
    return rows


def print_ratios(rows: list[dict], on_gpu: bool) -> None:
    print("\n== ratios" + ("" if on_gpu else " (the goals are for the H200; on CPU they mean nothing)"))
    for row in rows:
        verdict = ("met" if row["met"] else "NOT met") if on_gpu else ""
        print(f"  {row['label']:60s} {row['value']:9.2f}   goal {row['goal']:8s} {verdict}")


# ---------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the HF config.json to cut")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vision-depth", type=int, default=8)
    p.add_argument("--fullatt-blocks", type=int, nargs="*", default=None, help="vision blocks with full attention")
    for flag in ("hidden", "heads", "kv-heads", "intermediate", "vocab", "vision-hidden", "vision-heads",
                 "vision-intermediate"):
        p.add_argument(f"--{flag}", type=int, default=None, help="override the config's (a smaller model)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--image", type=int, default=448, help="image side in pixels (a multiple of 28)")
    p.add_argument("--loss-tokens", type=int, default=1024)
    p.add_argument("--head", choices=("fused", "full"), default="fused", help="grlhf's loss head")
    p.add_argument("--vocab-chunk", type=int, default=8192, help="vocabulary columns per chunk of the fused head")
    p.add_argument("--remat", choices=REMAT_POLICIES, default="none")
    p.add_argument("--attention", choices=("xla", "cudnn", "auto"), default="auto", help="grlhf attention_impl")
    p.add_argument("--torch-attention", default="sdpa", help="transformers attn_implementation")
    p.add_argument("--torch-logits", choices=("all", "loss"), default="all",
                   help="transformers computes logits at every position (its default) or at the loss's only")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=320, help="prompt tokens (with the image) for sampling")
    p.add_argument("--hbm-tbps", type=float, default=4.8, help="device memory bandwidth, TB/s (H200: 4.8)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for the MFU (H200: 989)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pause", type=float, default=0.1, help="seconds before each timed call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        p.error(f"--parts {','.join(args.parts)}: choose from {', '.join(PARTS)}")
    if not 0 < args.loss_tokens < args.seq:
        p.error(f"--loss-tokens {args.loss_tokens} must be in 1..{args.seq - 1}")
    if args.repeats < 1 or args.max_tokens < 2:
        p.error("--repeats must be >= 1 and --max-tokens >= 2 (one new token is the prefill's measurement)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = jax.devices()[0]
    report = dict(args={k: v for k, v in vars(args).items()},
                  machine=dict(jax_device=device.device_kind, jax_platform=device.platform,
                               torch_device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                               cpus=os.cpu_count(), python=platform.python_version(), jax=jax.__version__,
                               flax=getattr(__import__("flax"), "__version__", "?"), torch=torch.__version__,
                               transformers=__import__("transformers").__version__,
                               xla_mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
                               xla_preallocate=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")))
    print(f"jax {jax.__version__} on {device.device_kind} ({device.platform}); torch {torch.__version__} on "
          f"{report['machine']['torch_device']}; transformers {report['machine']['transformers']}; "
          f"XLA_PYTHON_CLIENT_MEM_FRACTION={report['machine']['xla_mem_fraction']}")
    began = time.perf_counter()
    config, hf, model = build_models(args, args.dtype)
    counts = matmul_params(hf.named_parameters())
    report["model"] = dict(layers=args.layers, vision_depth=args.vision_depth, params=counts["total"],
                           vision_fullatt=list(config.vision_config.fullatt_block_indexes),
                           build_s=time.perf_counter() - began)
    print(f"model: {counts['total'] / 1e9:.3f} B parameters ({args.layers} text layers, {args.vision_depth} vision "
          f"blocks, full attention in {report['model']['vision_fullatt']}), {args.dtype}; built and loaded in "
          f"{report['model']['build_s']:.1f} s")
    parts = dict(step=part_step, sample=part_sample, bridge=part_bridge)
    errors = report["errors"] = {}
    for name in PARTS:
        if name not in args.parts:
            continue
        try:
            parts[name](args, config, hf, model, report)
        except Exception:  # noqa: BLE001 - one part's failure (e.g. out of memory) is a finding; the others still run
            errors[name] = traceback.format_exc()
            print(f"\n== {name} FAILED:\n{errors[name]}", file=sys.stderr)
        release_memory(hf)
    report["ratios"] = ratio_rows(report)
    print_ratios(report["ratios"], device.platform == "gpu")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if errors:
        raise SystemExit(f"failed: {', '.join(errors)} (tracebacks above{' and in ' + args.json if args.json else ''})")
    return report


if __name__ == "__main__":
    main()
