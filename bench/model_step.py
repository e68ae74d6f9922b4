"""Benchmark a forward + backward step of a small Qwen2-VL / Qwen2.5-VL: grlhf (Flax NNX, one jitted
``jax.value_and_grad``) against transformers (PyTorch eager autograd) on the same weights, float32, CPU.

The model (about 5M parameters) is built from an HF config written here (no downloads): LM hidden 256,
4 layers, 4 heads of 64, 2 key/value heads, vocabulary 4096, tied embeddings; a 4-block vision tower.
transformers builds it with random weights (scaled up from HF's std-0.02 init so the logits are O(1-10),
as in the parity tests), ``save_pretrained`` writes it to a temporary directory and
``grlhf.models.qwen_vl.from_pretrained`` loads the same weights.

Each of ``--batch`` rows holds ``--seq`` tokens: a short prompt, one 224x224 image (grid [1, 16, 16]:
256 patches, 64 image tokens), then text; the last ``--response`` tokens of each row are the
"response". The loss is minus the mean log-prob of the response tokens:
JAX ``grlhf.rl.token_logprobs(logits[:, :-1], ids[:, 1:])``, PyTorch ``log_softmax`` + ``gather``.

Measured, for each side: forward + backward (loss and the gradient of every parameter) and forward only
(loss): the median and the fastest of ``--repeats`` timed calls after a warm-up call. The four are
timed in interleaved rounds, each call after a 0.1 s pause (straight after an XLA call PyTorch runs
~10% slower while XLA's worker threads wind down), so that a change in machine load hits all four
alike. For JAX, the compile time (``lower().compile()``) and the host-side ``prepare()`` (M-RoPE
positions, vision rotary/segments/window order, numpy) are reported separately; transformers redoes
that work inside every forward call. Tokens/s = batch * seq / step time; ratio = grlhf tokens/s /
PyTorch tokens/s. Also: the loss difference, a few gradient entries and the largest relative gradient
error over all parameters, the process CPU time per call, the peak RSS above the level before one
extra call (after ``malloc_trim``), and XLA's temporary-buffer size.

Before anything runs, glibc is set to keep freed memory for reuse, as grlhf's command lines do
(``grlhf.host_memory``; ``--malloc default`` measures glibc's own behaviour; both libraries allocate through it).
The 1-minute load average is printed before and after. On a machine that other processes also load,
PyTorch's OpenMP threads slow down far more than XLA's (more than 10x was seen on 2 cores), which
inflates the ratio; rerun when the load is below the number of CPUs.

Run from the repository root (each family takes about half a minute on 2 cores, ~1.5 GB of RAM):

    .venv/bin/python bench/model_step.py --family qwen2_5_vl
    .venv/bin/python bench/model_step.py --family qwen2_vl [--batch 4 --seq 512 --repeats 10 --json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, if not installed
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ itself
from peak_rss import PeakRSS  # noqa: E402
from grlhf.host_memory import keep_freed_memory  # noqa: E402
from grlhf.models.qwen_vl import from_pretrained, hf_params  # noqa: E402
from grlhf.rl import token_logprobs  # noqa: E402

IMAGE, VIDEO, VSTART, VEND = 4000, 4001, 4002, 4003
PAD, VOCAB = 2, 4096
GRID = (1, 16, 16)  # one 224x224 image: 16x16 patches of 14 px, merged 2x2 -> 64 tokens
PATCH_DIM = 3 * 2 * 14 * 14


# ---------------------------------------------------------------- model and inputs
def hf_config(family: str, attn: str):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
                bos_token_id=0, eos_token_id=1, pad_token_id=PAD)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
               tie_word_embeddings=True)
    if family == "qwen2_vl":
        vision = dict(depth=4, embed_dim=128, hidden_size=256, num_heads=4, mlp_ratio=4)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    else:
        vision = dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                      window_size=112, fullatt_block_indexes=[1, 3], tokens_per_second=2)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    config._attn_implementation = attn
    return config


def hf_model(family: str, attn: str, seed: int = 0, scale: float = 3.0):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    model = cls(hf_config(family, attn))
    model.set_attn_implementation(attn)
    model.train()  # no dropout in these models; train() only so nothing takes an inference-only path
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name and "ln_q" not in name:
                param.mul_(scale)
            else:
                param.add_(0.1 * torch.randn_like(param))
    return model


def make_inputs(batch: int, seq: int, seed: int = 0) -> dict:
    """Processor-shaped numpy inputs: each row = 8 prompt tokens, <vision_start>, 64 image tokens,
    <vision_end>, then text up to ``seq``; one image per row."""
    rng = np.random.default_rng(seed)
    n_image = int(np.prod(GRID)) // 4
    prompt = 8
    text_after = seq - prompt - n_image - 2
    if text_after < 1:
        raise ValueError(f"--seq {seq} is too short for a {n_image}-token image")
    rows = []
    for _ in range(batch):
        rows.append(np.concatenate([rng.integers(3, 3000, prompt), [VSTART], np.full(n_image, IMAGE), [VEND],
                                    rng.integers(3, 3000, text_after)]))
    input_ids = np.stack(rows).astype(np.int64)
    return dict(
        input_ids=input_ids,
        attention_mask=np.ones_like(input_ids),
        mm_token_type_ids=np.where(input_ids == IMAGE, 1, 0).astype(np.int64),
        pixel_values=rng.standard_normal((batch * int(np.prod(GRID)), PATCH_DIM)).astype(np.float32),
        image_grid_thw=np.array([GRID] * batch, np.int64),
    )


# ---------------------------------------------------------------- measurement helpers
def _malloc_trim() -> None:
    """Give glibc's free heap pages back to the OS, so that memory a call allocates shows up in RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


PAUSE_S = 0.1  # idle time before each timed call: right after an XLA call, PyTorch runs ~10% slower


def measure(fns: dict, repeats: int) -> dict:
    """Time each callable: one warm-up call, then ``repeats`` rounds that call every function once in
    turn (interleaved, so a change in machine load hits all of them alike; ``PAUSE_S`` before each call
    so that one library's worker threads, still spinning after its call, do not slow the next); then one
    more call each under ``PeakRSS`` after ``malloc_trim``. Returns the warm-up time, median / min of the
    rounds (wall clock; and the median process CPU time over all threads, a check when other processes
    load the machine), and the peak RSS delta."""
    out = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        out[name] = dict(first_s=time.perf_counter() - t0, times_s=[])
        out[name]["cpu_s"] = []
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            out[name]["times_s"].append(time.perf_counter() - t0)
            out[name]["cpu_s"].append(time.process_time() - c0)
    for name, fn in fns.items():
        gc.collect()
        _malloc_trim()
        time.sleep(PAUSE_S)
        with PeakRSS() as mem:
            fn()
        times = out[name]["times_s"]
        out[name].update(median_s=statistics.median(times), min_s=min(times), peak_rss_delta_mib=mem.delta_mib,
                         median_cpu_s=statistics.median(out[name]["cpu_s"]))
    return out


def count_params(model: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    visual = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    return dict(total=total, vision=visual, language=total - visual)


# ---------------------------------------------------------------- the two sides
def torch_side(model, inputs: dict, response: int):
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    ids = tensors["input_ids"]
    targets = ids[:, 1:]

    def loss_fn():
        logits = model(**tensors).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets[..., None])[..., 0]
        return -logp[:, -response:].mean()

    def fwd():
        with torch.no_grad():
            return loss_fn()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss

    loss = fwd_bwd().item()
    grads = {hf_params.canonical_hf_key(n): p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    return loss, grads, fwd, fwd_bwd


def jax_side(model, inputs: dict, response: int):
    t0 = time.perf_counter()
    prepared = model.prepare(**inputs)
    prepare_s = time.perf_counter() - t0
    prepared = jax.device_put(jax.tree.map(np.asarray, prepared))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, inputs):
        m = nnx.merge(graphdef, params, rest)
        logits = m.forward(*inputs)
        ids = inputs.input_ids
        logp = token_logprobs(logits[:, :-1], ids[:, 1:])
        return -jnp.mean(logp[:, -response:])

    fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
    fwd = jax.jit(loss_fn)
    t0 = time.perf_counter()
    fwd_bwd_c = fwd_bwd.lower(params, prepared).compile()
    compile_fwd_bwd_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fwd_c = fwd.lower(params, prepared).compile()
    compile_fwd_s = time.perf_counter() - t0

    loss, grads = fwd_bwd_c(params, prepared)
    loss = float(loss)
    flat = {hf_params.path_to_str(path): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for path, v in nnx.to_flat_state(grads)}
    extra = dict(compile_fwd_bwd_s=compile_fwd_bwd_s, compile_fwd_s=compile_fwd_s, prepare_s=prepare_s)
    for name, compiled in (("fwd_bwd", fwd_bwd_c), ("fwd", fwd_c)):
        try:
            extra[f"xla_temp_mib_{name}"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
        except Exception:  # noqa: BLE001 - not every backend reports it
            pass
    return (loss, flat, lambda: jax.block_until_ready(fwd_c(params, prepared)),
            lambda: jax.block_until_ready(fwd_bwd_c(params, prepared)), extra)


def compare_grads(jax_grads: dict, torch_grads: dict) -> dict:
    """Max relative error over all parameters (max |diff| / max |torch grad|, per tensor) and a few entries."""
    worst, worst_name, samples = 0.0, None, {}
    for path, g in jax_grads.items():
        key, transform = hf_params.hf_key(path)
        ref = hf_params.to_nnx(torch_grads[key], transform)
        rel = float(np.max(np.abs(g - ref)) / (np.max(np.abs(ref)) + 1e-30))
        if rel > worst:
            worst, worst_name = rel, key
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                "visual.blocks.0.attn.qkv.weight", "visual.patch_embed.proj.weight"):
        path = next(p for p in jax_grads if hf_params.hf_key(p)[0] == key)
        transform = hf_params.hf_key(path)[1]
        ref = hf_params.to_nnx(torch_grads[key], transform).reshape(-1)
        got = jax_grads[path].reshape(-1)
        index = int(np.argmax(np.abs(ref)))
        samples[key] = dict(index=index, jax=float(got[index]), torch=float(ref[index]))
    return dict(max_rel_err=worst, worst_param=worst_name, samples=samples)


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("qwen2_vl", "qwen2_5_vl"), default="qwen2_5_vl")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--response", type=int, default=256, help="loss over the last RESPONSE tokens of each row")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="transformers attention")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory for reuse, as grlhf's command lines set it "
                             "(grlhf/host_memory.py; both libraries allocate through it); default: glibc's own")
    args = parser.parse_args(argv)
    malloc_kept = args.malloc == "keep" and keep_freed_memory()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    hf = hf_model(args.family, args.attn)
    params = count_params(hf)
    inputs = make_inputs(args.batch, args.seq)
    tokens = args.batch * args.seq
    print(f"{args.family}: {params['total'] / 1e6:.2f}M parameters (vision {params['vision'] / 1e6:.2f}M, "
          f"language {params['language'] / 1e6:.2f}M, tied embeddings); batch {args.batch} x {args.seq} tokens, "
          f"{inputs['pixel_values'].shape[0]} patches; loss over the last {args.response} tokens; "
          f"torch attention {args.attn}, {torch.get_num_threads()} threads; float32 {jax.devices()[0].platform}; "
          f"malloc {'keeps freed memory' if malloc_kept else 'glibc default'}")

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = from_pretrained(tmp)

    t_loss, t_grads, t_fwd_fn, t_fwd_bwd_fn = torch_side(hf, inputs, args.response)
    j_loss, j_grads, j_fwd_fn, j_fwd_bwd_fn, extra = jax_side(model, inputs, args.response)
    grads = compare_grads(j_grads, t_grads)
    del t_grads, j_grads
    timed = measure(dict(j_fwd_bwd=j_fwd_bwd_fn, t_fwd_bwd=t_fwd_bwd_fn, j_fwd=j_fwd_fn, t_fwd=t_fwd_fn),
                    args.repeats)
    j_fwd_bwd, t_fwd_bwd, j_fwd, t_fwd = (timed[k] for k in ("j_fwd_bwd", "t_fwd_bwd", "j_fwd", "t_fwd"))

    load_after = os.getloadavg()
    result = dict(
        load_average_1min=dict(before=load_before[0], after=load_after[0]), cpus=os.cpu_count(),
        family=args.family, batch=args.batch, seq=args.seq, response=args.response, repeats=args.repeats,
        torch_attention=args.attn, threads=args.threads, params=params, tokens=tokens, malloc_kept=malloc_kept,
        versions=dict(jax=jax.__version__, flax=getattr(__import__("flax"), "__version__", "?"),
                      torch=torch.__version__, transformers=__import__("transformers").__version__,
                      python=platform.python_version()),
        loss=dict(jax=j_loss, torch=t_loss, rel_diff=abs(j_loss - t_loss) / abs(t_loss)), grads=grads,
        jax=dict(fwd=j_fwd, fwd_bwd=j_fwd_bwd, **extra), torch=dict(fwd=t_fwd, fwd_bwd=t_fwd_bwd),
    )
    for name in ("fwd_bwd", "fwd"):
        jt, tt = j_fwd_bwd if name == "fwd_bwd" else j_fwd, t_fwd_bwd if name == "fwd_bwd" else t_fwd
        result[f"ratio_{name}"] = tt["median_s"] / jt["median_s"]
        result[f"ratio_{name}_incl_prepare"] = tt["median_s"] / (jt["median_s"] + extra["prepare_s"])
        result[f"ratio_{name}_min"] = tt["min_s"] / jt["min_s"]
        result[f"ratio_{name}_cpu"] = tt["median_cpu_s"] / jt["median_cpu_s"]

    print(f"loss: jax {j_loss:.6f}  torch {t_loss:.6f}  rel diff {result['loss']['rel_diff']:.2e}")
    print(f"grads: max relative error {grads['max_rel_err']:.2e} (worst {grads['worst_param']})")
    for key, s in grads["samples"].items():
        print(f"  {key}[{s['index']}]: jax {s['jax']:+.6e}  torch {s['torch']:+.6e}")
    print(f"{'':16s}{'median s':>10s}{'min s':>9s}{'tokens/s':>10s}{'CPU s':>8s}{'first s':>9s}{'peak RSS +MiB':>15s}")
    for side, t in (("grlhf", j_fwd_bwd), ("torch", t_fwd_bwd), ("grlhf fwd", j_fwd), ("torch fwd", t_fwd)):
        print(f"{side:16s}{t['median_s']:10.3f}{t['min_s']:9.3f}{tokens / t['median_s']:10.0f}{t['median_cpu_s']:8.3f}"
              f"{t['first_s']:9.3f}{t['peak_rss_delta_mib']:15.0f}")
    print(f"grlhf compile: fwd+bwd {extra['compile_fwd_bwd_s']:.2f} s, fwd {extra['compile_fwd_s']:.2f} s; "
          f"host prepare() {extra['prepare_s'] * 1e3:.1f} ms per batch; XLA temp buffers: fwd+bwd "
          f"{extra.get('xla_temp_mib_fwd_bwd', float('nan')):.0f} MiB, "
          f"fwd {extra.get('xla_temp_mib_fwd', float('nan')):.0f} MiB")
    print(f"ratio (grlhf tokens/s / torch tokens/s): fwd+bwd {result['ratio_fwd_bwd']:.2f}x "
          f"({result['ratio_fwd_bwd_incl_prepare']:.2f}x counting prepare), fwd {result['ratio_fwd']:.2f}x "
          f"({result['ratio_fwd_incl_prepare']:.2f}x counting prepare)")
    print(f"  from the fastest calls: fwd+bwd {result['ratio_fwd_bwd_min']:.2f}x, fwd {result['ratio_fwd_min']:.2f}x; "
          f"from CPU time: fwd+bwd {result['ratio_fwd_bwd_cpu']:.2f}x, fwd {result['ratio_fwd_cpu']:.2f}x")
    print(f"1-min load average: {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} CPUs"
          + ("  -- other processes were running (this one alone adds ~1 per thread): PyTorch's OpenMP threads"
             " slow down badly when they do;"
             " rerun on a quiet machine" if max(load_before[0], load_after[0]) > os.cpu_count() else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
