"""Benchmark the group judge's generation with and without the shared-prefix prefill, in one process.

The embedded default's stage-2 judging: ``--prompts`` synthetic colour prompts (one 112x112 image each) with
``--answers`` answers each, every ordered pair judged (``k(k-1)`` judge prompts per prompt, the compact
template), greedy, ``--max-tokens`` new tokens, in ``GroupJudge`` calls of ``--batch`` prompts. The judge is
the tiny default checkpoint (``grlhf.tiny.cached_tiny_checkpoint``, built offline on first use), untrained,
so no judgment stops early: every call decodes the whole budget, as the jitted loop does anyway.

Two ``JaxSampler`` back ends on the same model: ``share_prefix=True`` (each prompt's image + question
prefilled once, the answers' suffixes after it; ``jax_sampler.decode_shared``) and ``share_prefix=False``
(every judge prompt prefilled whole, with its image). Each is timed for the full budget and for one new
token (prefill + one step, which isolates the prefill). One warm-up call each (compile), then
``--repeats`` interleaved rounds after a 0.1 s pause; wall clock median. The time includes the host side
(chat template, image processor, batching) and parsing.

    .venv/bin/python bench/judge_prefix.py [--prompts 16 --answers 5 --max-tokens 80 --repeats 3 --json out.json]
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, if not installed

from grlhf.data import synthetic  # noqa: E402
from grlhf.data.processor import load_processor  # noqa: E402
from grlhf.models.qwen_vl import from_pretrained  # noqa: E402
from grlhf.reward.judge import Group, GroupJudge  # noqa: E402
from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE  # noqa: E402
from grlhf.rollout.jax_sampler import JaxSampler  # noqa: E402
from grlhf.tiny import cached_tiny_checkpoint  # noqa: E402

PAUSE_S = 0.1
LENGTH_BUCKETS = (64, 96, 128, 160, 192, 256, 320, 384, 512)  # configs/default.yaml's data.length_buckets


def groups(prompts: int, answers: int) -> list[Group]:
    cfg = synthetic.SyntheticConfig(seed=0, max_shapes=1, question_kinds=("colour",))
    colours = list(synthetic.world.COLOURS)
    rng = np.random.default_rng(0)
    return [Group(item["question"], item["image"], [f"The shape is {c}." for c in rng.choice(colours, answers)])
            for item in synthetic.rl_prompts(cfg, prompts)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["qwen2_vl", "qwen2_5_vl"], default="qwen2_vl")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--answers", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--batch", type=int, default=256, help="judge prompts per generate call (reward.judge_batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} "
          f"({jax.devices()[0].platform}); load average (1 min) before: {os.getloadavg()[0]:.2f}")

    model_dir = cached_tiny_checkpoint(args.family)
    model, processor = from_pretrained(model_dir), load_processor(model_dir)
    work = groups(args.prompts, args.answers)
    judgments = args.prompts * args.answers * (args.answers - 1)

    def judge(share: bool, max_tokens: int):
        sampler = JaxSampler(model, processor=processor, length_buckets=LENGTH_BUCKETS, share_prefix=share)
        grouped = GroupJudge(sampler, template=COMPACT_JUDGE_TEMPLATE, max_tokens=max_tokens, max_batch=args.batch)
        return lambda: grouped(work)

    fns = {f"{name} {tokens}": judge(share, tokens) for tokens in (args.max_tokens, 1)
           for name, share in (("shared", True), ("unshared", False))}
    results = {name: dict(first_s=0.0, times_s=[]) for name in fns}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        out = fn()
        results[name]["first_s"] = time.perf_counter() - t0
        results[name]["judge_tokens"] = out.metrics["judge_tokens"]
    for _ in range(args.repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            fn()
            results[name]["times_s"].append(time.perf_counter() - t0)
    for rec in results.values():
        rec["median_s"] = statistics.median(rec["times_s"])
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}\n")
    print(f"{judgments} judgments ({args.prompts} prompts x {args.answers}x{args.answers - 1} ordered pairs), "
          f"greedy, calls of {args.batch}; median of {args.repeats} (wall); 1st call includes compile")
    print(f"{'':16s} {'median':>9s} {'1st call':>9s}")
    for name, rec in results.items():
        print(f"{name:16s} {rec['median_s']:8.2f}s {rec['first_s']:8.2f}s")
    full, one = args.max_tokens, 1
    summary = {
        "speedup_total": results[f"unshared {full}"]["median_s"] / results[f"shared {full}"]["median_s"],
        "speedup_prefill": results[f"unshared {one}"]["median_s"] / results[f"shared {one}"]["median_s"],
    }
    print(f"shared-prefix speed-up: {summary['speedup_total']:.2f}x for {full} tokens, "
          f"{summary['speedup_prefill']:.2f}x for the prefill (1 token)")
    report = dict(args=vars(args), results=results, **summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
