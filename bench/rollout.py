"""Benchmark sampling throughput: grlhf's ``JaxSampler`` (one jitted prefill + a ``while_loop`` decode) against
transformers ``generate`` (PyTorch eager, sdpa) on the same tiny-default checkpoint, float32, CPU.

The model is ``grlhf.tiny.cached_tiny_checkpoint(--family)`` (built offline on first use into
``$GRLHF_CACHE`` or ``~/.cache/grlhf``): text hidden 128, 2 layers, a 2-block vision tower. ``--prompts``
synthetic RL prompts (``grlhf.data.synthetic.rl_prompts``: one 112x112 image + a question each) are
encoded once with ``grlhf.data.batching.encode_prompts`` (chat template, left-padded to a length
bucket: by default the embedded default's ``data.length_buckets``, what a run pads to); both sides get exactly that batch (transformers also once with the padding cut to the longest prompt): grlhf as ``model.prepare(**batch.model_inputs())``,
transformers as torch tensors of the same ``input_ids`` / ``attention_mask`` / ``mm_token_type_ids`` /
``pixel_values`` / ``image_grid_thw``.

Each side draws ``--n`` samples per prompt of exactly ``--max-tokens`` new tokens at temperature 1
(top-k and top-p off). No early stop on either side: grlhf's sampler is built without a tokenizer and
with no stop ids; transformers gets ``min_new_tokens = max_new_tokens`` (eos suppressed). The script
checks that every sample has the full length.

grlhf prefills each prompt once (``prompts`` rows, vision tower included) and repeats the KV cache and
last logits ``n`` times (``jnp.repeat`` in ``grlhf.rollout.jax_sampler.decode``); transformers'
``num_return_sequences`` expands the inputs (pixels included) before the prefill, which so runs on
``prompts * n`` rows.

Timing: one warm-up call each, then ``--repeats`` interleaved rounds (each call after a 0.1 s pause, as
in ``bench/model_step.py``), wall clock. Tokens/s = prompts * n * max_tokens / median time; the grlhf
time includes the host-side ``prepare`` (M-RoPE positions, vision indices) and the numpy conversion of
the outputs, the transformers time its own equivalent work. JAX compile time = warm-up call - median.
A second, smaller measurement runs both with one new token (prefill + one sample), which splits each
side's time into prefill and decode. The 1-minute load average is printed before and after; rerun
when it is above the number of CPUs.

Run from the repository root (about 20 s per family on 2 cores, plus building the tiny checkpoint once):

    .venv/bin/python bench/rollout.py --family qwen2_vl
    .venv/bin/python bench/rollout.py --family qwen2_5_vl [--prompts 8 --n 5 --max-tokens 64 --repeats 5 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, if not installed

from grlhf.config import load_config  # noqa: E402
from grlhf.data import synthetic  # noqa: E402
from grlhf.data.batching import encode_prompts  # noqa: E402
from grlhf.data.processor import load_processor  # noqa: E402
from grlhf.models.qwen_vl import from_pretrained  # noqa: E402
from grlhf.rollout.base import SamplingParams  # noqa: E402
from grlhf.rollout.jax_sampler import JaxSampler  # noqa: E402
from grlhf.tiny import cached_tiny_checkpoint  # noqa: E402

PAUSE_S = 0.1  # idle time before each timed call (XLA's worker threads wind down; see bench/model_step.py)


def conversations(count: int) -> list:
    items = synthetic.rl_prompts(synthetic.SyntheticConfig(seed=0), count)
    return [[{"role": "user", "content": [{"type": "image", "image": item["image"]},
                                          {"type": "text", "text": item["question"]}]}] for item in items]


def measure(fns: dict, repeats: int) -> dict:
    """One warm-up call each, then ``repeats`` interleaved rounds; wall clock and process CPU time."""
    out = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        out[name] = dict(first_s=time.perf_counter() - t0, times_s=[], cpu_s=[])
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            out[name]["times_s"].append(time.perf_counter() - t0)
            out[name]["cpu_s"].append(time.process_time() - c0)
    for rec in out.values():
        rec.update(median_s=statistics.median(rec["times_s"]), min_s=min(rec["times_s"]),
                   median_cpu_s=statistics.median(rec["cpu_s"]))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["qwen2_vl", "qwen2_5_vl"], default="qwen2_vl")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--length-buckets", type=int, nargs="+", default=None,
                        help="prompt length buckets (default: configs/default.yaml's data.length_buckets)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-split", action="store_true", help="skip the one-new-token (prefill) measurement")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)

    load_before = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}, "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}; torch threads {torch.get_num_threads()}")
    print(f"load average (1 min) before: {load_before[0]:.2f}")

    model_dir = cached_tiny_checkpoint(args.family)
    processor = load_processor(model_dir)
    t0 = time.perf_counter()
    buckets = args.length_buckets or load_config([]).data.length_buckets
    batch = encode_prompts(processor, conversations(args.prompts), length_buckets=buckets)
    encode_s = time.perf_counter() - t0
    lengths = batch.attention_mask.sum(1)
    print(f"{args.family} from {model_dir}\n{args.prompts} prompts: {int(lengths.min())}-{int(lengths.max())} tokens, "
          f"left-padded to {batch.input_ids.shape[1]}; {batch.pixel_values.shape[0]} patches, grids "
          f"{batch.image_grid_thw[0].tolist()}; encode {encode_s * 1e3:.0f} ms (not timed below)")

    # ---- grlhf
    jax_model = from_pretrained(model_dir)
    sampler = JaxSampler(jax_model)  # no tokenizer: no eos, so every row runs max_tokens
    assert sampler.eos_token_ids == ()
    model_inputs = batch.model_inputs()
    seeds = iter(range(1, 10**6))

    def jax_fn(max_tokens):
        def run():
            prompt = jax_model.prepare(**model_inputs)
            return sampler.generate(prompt, SamplingParams(n=args.n, temperature=1.0, top_p=1.0, top_k=0,
                                                           max_tokens=max_tokens, stop_token_ids=(),
                                                           seed=next(seeds)))
        return run

    # ---- transformers
    from transformers import AutoModelForImageTextToText

    hf_model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    hf_inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in model_inputs.items()
                 if k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")}
    hf_inputs["input_ids"] = hf_inputs["input_ids"].long()
    hf_inputs["attention_mask"] = hf_inputs["attention_mask"].long()
    hf_inputs["mm_token_type_ids"] = hf_inputs["mm_token_type_ids"].long()
    pad_id = processor.tokenizer.pad_token_id
    # the same rows left-padded only to the longest prompt (what ``processor(..., padding=True)`` gives)
    cut = batch.input_ids.shape[1] - int(lengths.max())
    hf_tight = {k: (v[:, cut:] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
                for k, v in hf_inputs.items()}

    def hf_fn(max_tokens, inputs=hf_inputs):
        def run():
            with torch.inference_mode():
                return hf_model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                         max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                         num_return_sequences=args.n, pad_token_id=pad_id)
        return run

    # ---- first calls (grlhf: trace + compile + run), with checks: full length on both sides
    t0 = time.perf_counter()
    out = jax_fn(args.max_tokens)()
    jax_first = time.perf_counter() - t0
    assert len(out) == args.prompts and all(len(c) == args.n for c in out)
    assert all(len(s.token_ids) == args.max_tokens for c in out for s in c), "grlhf stopped early"
    t0 = time.perf_counter()
    seqs = hf_fn(args.max_tokens)()
    hf_first = time.perf_counter() - t0
    assert seqs.shape == (args.prompts * args.n, batch.input_ids.shape[1] + args.max_tokens), seqs.shape
    print(f"checked: {args.prompts * args.n} rows x {args.max_tokens} new tokens on both sides "
          f"(attn_implementation={hf_model.config._attn_implementation})")

    tokens = args.prompts * args.n * args.max_tokens
    fns = {"grlhf": jax_fn(args.max_tokens), "transformers": hf_fn(args.max_tokens),
           "transformers tight": hf_fn(args.max_tokens, hf_tight)}
    if not args.no_split:
        fns.update({"grlhf 1 token": jax_fn(1), "transformers 1 token": hf_fn(1)})
    res = measure(fns, args.repeats)  # the "1st call" of the main pair is replaced by the real first call
    res["grlhf"]["first_s"], res["transformers"]["first_s"] = jax_first, hf_first
    load_after = os.getloadavg()
    compile_probe = dict(first_s=jax_first, median_s=res["grlhf"]["median_s"],
                         compile_s=jax_first - res["grlhf"]["median_s"])
    if not args.no_split:
        compile_probe["compile_1_token_s"] = res["grlhf 1 token"]["first_s"] - res["grlhf 1 token"]["median_s"]

    print(f"load average (1 min) after: {load_after[0]:.2f}\n")
    print(f"{args.prompts} prompts x n={args.n} x {args.max_tokens} tokens = {tokens} tokens; "
          f"median / min of {args.repeats} (wall), process CPU time, 1st call; ratio = transformers median / this")
    print(f"('transformers tight': the same rows padded to the longest prompt, {int(lengths.max())}, "
          f"not to the bucket, {batch.input_ids.shape[1]})")
    print(f"{'':22s} {'median':>9s} {'min':>9s} {'cpu':>8s} {'1st call':>9s} {'tokens/s':>9s} {'ratio':>6s}")
    base = res["transformers"]["median_s"]
    for name, rec in res.items():
        per = tokens if "1 token" not in name else args.prompts * args.n
        ratio = (res["transformers 1 token" if "1 token" in name else "transformers"]["median_s"]) / rec["median_s"]
        rec["tokens_per_s"] = per / rec["median_s"]
        rec["ratio_vs_transformers"] = ratio
        print(f"{name:22s} {rec['median_s'] * 1e3:7.0f}ms {rec['min_s'] * 1e3:7.0f}ms {rec['median_cpu_s']:7.2f}s "
              f"{rec['first_s']:8.2f}s {rec['tokens_per_s']:9.0f} {ratio:6.2f}")
    print(f"grlhf / transformers tokens/s: {base / res['grlhf']['median_s']:.2f}x")
    print(f"grlhf compile (first call minus median): {compile_probe['compile_s']:.2f} s "
          f"(first {compile_probe['first_s']:.2f} s, median {compile_probe['median_s'] * 1e3:.0f} ms)"
          + (f"; 1-token program {compile_probe['compile_1_token_s']:.2f} s" if not args.no_split else ""))
    if not args.no_split:
        for side in ("grlhf", "transformers"):
            pre = res[f"{side} 1 token"]["median_s"]
            dec = (res[side]["median_s"] - pre) / max(args.max_tokens - 1, 1)
            res[side].update(prefill_plus_1_s=pre, per_decode_step_s=dec)
            print(f"{side:12s}: prefill + 1 token {pre * 1e3:6.0f} ms, then {dec * 1e3:6.2f} ms per decode step "
                  f"({args.prompts * args.n} rows)")
    print(f"prefill rows: grlhf {args.prompts} (cache repeated x{args.n} after the prefill), "
          f"transformers {args.prompts * args.n} (inputs expanded by num_return_sequences)")

    result = dict(family=args.family, prompts=args.prompts, n=args.n, max_tokens=args.max_tokens,
                  repeats=args.repeats, prompt_len=int(batch.input_ids.shape[1]),
                  patches=int(batch.pixel_values.shape[0]), tokens=tokens, results=res, compile=compile_probe,
                  load_before=load_before[0], load_after=load_after[0],
                  versions=dict(jax=jax.__version__, torch=torch.__version__,
                                transformers=__import__("transformers").__version__))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
