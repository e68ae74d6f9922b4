"""Benchmark one GRPO loss evaluation: grlhf's jitted JAX core against PyTorch (eager and torch.compile).

The loss, from logits ``[B, T, V]`` float32 at a sampling temperature:

    logp, entropy = log-softmax(logits / temperature)[token], entropy of softmax(logits / temperature)
    loss = pg_loss + 0.02 * kl_loss - 0.001 * entropy_loss

with PPO clip (0.2 / 0.2) and dual clip (3.0) against ``old_logp``, KL k3 (verl's ``low_var_kl``)
against ``ref_logp``, token-mean aggregation under a padding mask. The JAX side is one ``jax.jit`` of
``grlhf.rl`` functions; the PyTorch side is the same math written as verl writes it (``logits.div(T)``,
``log_softmax`` + ``gather``, ``logsumexp - sum(softmax * z)``, vanilla PPO loss, clamped k3,
``masked_mean``), run eagerly and under ``torch.compile``, in the same process on the same arrays.

For each implementation it measures the forward pass (loss only) and forward+backward (loss and its
gradient with respect to the logits): median wall time over ``--repeats`` calls, the first call
(compilation / warm-up) reported separately, and the peak resident memory above the pre-call baseline
(``/proc/self/statm`` sampled every ~1 ms in a thread), the page faults and kernel CPU time per call,
and XLA's ``memory_analysis()`` for JAX. It checks that the three agree on the loss and the gradient.

Run from the repository root (takes ~3 minutes and ~19 GB of RAM at the defaults):

    .venv/bin/python bench/rl_core.py [--batch 16 --seq 1024 --vocab 32768 --repeats 5 --json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, if not installed
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ itself
from peak_rss import PeakRSS  # noqa: E402
from grlhf.rl import aggregate, kl_penalty, logprobs_and_entropy, ppo_clip_loss

KL_COEF, ENT_COEF, CLIP, DUAL_CLIP = 0.02, 0.001, 0.2, 3.0
GIB = 2.0**30


# ---------------------------------------------------------------- the two implementations
def grpo_loss_jax(logits, tokens, old_logp, ref_logp, adv, mask, temperature):
    logp, ent = logprobs_and_entropy(logits, tokens, temperature)
    pg_total, denom, _ = ppo_clip_loss(
        logp, old_logp, adv, mask, clip_low=CLIP, clip_high=CLIP, dual_clip=DUAL_CLIP, agg="token-mean"
    )
    kl_total, _ = aggregate(kl_penalty(logp, ref_logp, "k3"), mask, "token-mean")
    ent_total, _ = aggregate(ent, mask, "token-mean")
    return (pg_total + KL_COEF * kl_total - ENT_COEF * ent_total) / denom


def _masked_mean(values, mask):  # verl.utils.torch_functional.masked_mean
    return (values * mask).sum() / (mask.sum() + 1e-8)


def grpo_loss_torch(logits, tokens, old_logp, ref_logp, adv, mask, temperature: float):
    logits = logits.div(temperature)
    # logprobs_from_logits (naive): log_softmax + gather
    logp = torch.gather(torch.log_softmax(logits, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)
    # entropy_from_logits
    pd = torch.softmax(logits, dim=-1)
    ent = torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)
    # compute_policy_loss_vanilla (token-mean), with dual clip
    adv = adv.unsqueeze(-1).expand_as(logp)
    negative_approx_kl = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - CLIP, 1 + CLIP)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -adv * DUAL_CLIP
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    pg_loss = _masked_mean(pg_losses, mask)
    # kl_penalty low_var_kl
    kl = torch.clamp(ref_logp - logp, min=-20, max=20)
    kld = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    kl_loss = _masked_mean(kld, mask)
    entropy_loss = _masked_mean(ent, mask)
    return pg_loss - ENT_COEF * entropy_loss + KL_COEF * kl_loss


# ---------------------------------------------------------------- measuring
def measure(fn, repeats):
    """Run fn() (one call to completion) once to warm up, then `repeats` times. -> (stats dict, last result).

    Besides wall time and peak RSS it records, per call, the minor page faults and the kernel CPU time:
    fresh multi-GiB buffers are mmap'd and first-touched on every call, which on a VM is costly and noisy.
    """
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times, peaks, faults, sys_s, cpu_s = [], [], [], [], []
    for _ in range(repeats):
        del result
        gc.collect()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        peaks.append(mem.extra)
        faults.append(r1.ru_minflt - r0.ru_minflt)
        sys_s.append(r1.ru_stime - r0.ru_stime)
        cpu_s.append(sys_s[-1] + r1.ru_utime - r0.ru_utime)
    stats = dict(first_s=first, median_s=statistics.median(times), times_s=times, peak_extra_bytes=max(peaks),
                 page_faults=int(statistics.median(faults)), sys_s=statistics.median(sys_s),
                 cpu_s=statistics.median(cpu_s))
    return stats, result


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return max(float(np.max(np.abs(a[i] - b[i]))) for i in range(a.shape[0]))  # row by row: no 2 GiB temp


# ---------------------------------------------------------------- phases
def make_inputs(B, T, V, temperature, seed=0):
    rng = np.random.default_rng(seed)
    logits = np.empty((B, T, V), np.float32)
    for i in range(B):
        logits[i] = rng.standard_normal((T, V), dtype=np.float32)
    tokens = rng.integers(0, V, (B, T), dtype=np.int32)
    lengths = rng.integers(T // 4, T + 1, B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    adv = rng.standard_normal(B).astype(np.float32)
    logp = np.asarray(jax.jit(lambda x, t: logprobs_and_entropy(x, t, temperature)[0])(logits, tokens))
    old_logp = (logp + 0.15 * rng.standard_normal((B, T))).astype(np.float32)
    ref_logp = (logp + 0.10 * rng.standard_normal((B, T))).astype(np.float32)
    return dict(logits=logits, tokens=tokens, old_logp=old_logp, ref_logp=ref_logp, adv=adv, mask=mask)


def run_jax(inp, temperature, repeats):
    args = [jax.device_put(inp[k]) for k in ("logits", "tokens", "old_logp", "ref_logp", "adv", "mask")]
    loss_fn = lambda *a: grpo_loss_jax(*a, temperature)  # noqa: E731
    out = {}
    for name, f in (("fwd", loss_fn), ("fwd+bwd", jax.value_and_grad(loss_fn))):
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(*args).compile()
        compile_s = time.perf_counter() - t0
        stats, res = measure(lambda: jax.block_until_ready(compiled(*args)), repeats)
        ma = compiled.memory_analysis()
        out[name] = dict(compile_s=compile_s, **stats, xla_temp_bytes=getattr(ma, "temp_size_in_bytes", None))
        if name == "fwd":
            out["loss"] = float(res)
        else:
            out["loss_bwd"] = float(res[0])
            # the reference gradient waits on disk, not in RAM: torch eager needs the room (~16 GiB)
            grad_path = os.path.join(tempfile.mkdtemp(prefix="rl_core_"), "jax_grad.npy")
            np.save(grad_path, np.asarray(res[1]))
        del compiled, res
    del args
    gc.collect()
    return out, grad_path


def run_torch(inp, temperature, repeats, fn, grad_path):
    logits = torch.from_numpy(inp["logits"])  # shares the numpy buffer: no copy
    rest = [torch.from_numpy(inp[k]) for k in ("tokens", "old_logp", "ref_logp", "adv", "mask")]
    rest[0] = rest[0].long()
    out = {}

    def fwd():
        with torch.no_grad():
            return fn(logits, *rest, temperature)

    out["fwd"], loss = measure(fwd, repeats)
    out["loss"] = float(loss)
    del loss

    leaf = logits.detach().requires_grad_(True)

    def fwd_bwd():
        loss = fn(leaf, *rest, temperature)
        loss.backward()
        grad, leaf.grad = leaf.grad, None  # the result owns the gradient: freed before the next call
        return loss.detach(), grad

    out["fwd+bwd"], res = measure(fwd_bwd, repeats)
    out["loss_bwd"] = float(res[0])
    out["grad_max_abs_diff_vs_jax"] = max_abs_diff(res[1].numpy(), np.load(grad_path, mmap_mode="r"))
    del res, leaf, logits, rest
    gc.collect()
    return out


# ---------------------------------------------------------------- report
def print_table(results, logits_bytes):
    jx, page = results["jax jit"], os.sysconf("SC_PAGE_SIZE")
    ok = {name: r for name, r in results.items() if "error" not in r}
    print(f"\n{'':<14}{'---------- forward ----------':>30}{'------ forward+backward ------':>32}")
    print(f"{'impl':<14}{'median ms':>11}{'/ jax':>8}{'1st call s':>11}{'median ms':>13}{'/ jax':>8}{'1st call s':>11}")
    for name, r in ok.items():
        row = f"{name:<14}"
        for ph in ("fwd", "fwd+bwd"):
            p = r[ph]
            first = p.get("compile_s", 0.0) + p["first_s"]  # jax: lower+compile, then the first run
            width, ratio = (11 if ph == "fwd" else 13), p["median_s"] / jx[ph]["median_s"]
            row += f"{p['median_s'] * 1e3:>{width}.0f}{ratio:>8.2f}{first:>11.1f}"
        print(row)
    print(f"\n{'memory per call':<16}{'peak RSS above baseline, GiB (x logits)':>40}"
          f"{'page faults GiB':>17}{'kernel s':>10}")
    for name, r in ok.items():
        for ph in ("fwd", "fwd+bwd"):
            p = r[ph]
            peak = p["peak_extra_bytes"]
            print(f"{name + ' ' + ph:<28}{peak / GIB:>14.2f} ({peak / logits_bytes:.2f})"
                  f"{p['page_faults'] * page / GIB:>23.2f}{p['sys_s']:>10.2f}")
    for ph in ("fwd", "fwd+bwd"):
        t = jx[ph].get("xla_temp_bytes")
        if t is not None:
            print(f"jax {ph}: XLA memory_analysis temp {t / GIB:.3f} GiB ({t / logits_bytes:.3f} x logits)")
    for name, r in results.items():
        if "error" in r:
            print(f"{name} failed: {r['error'][:200]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--json", type=str, default=None, help="write the results here")
    a = ap.parse_args()
    torch.set_num_threads(2)
    B, T, V = a.batch, a.seq, a.vocab
    logits_bytes = B * T * V * 4
    print(f"GRPO loss, logits [{B}, {T}, {V}] float32 = {logits_bytes / GIB:.2f} GiB, temperature {a.temperature}, "
          f"{a.repeats} repeats; jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")

    inp = make_inputs(B, T, V, a.temperature)
    gc.collect()
    results = {}
    print("jax jit ...", flush=True)
    results["jax jit"], grad_path = run_jax(inp, a.temperature, a.repeats)
    try:
        print("torch eager ...", flush=True)
        results["torch eager"] = run_torch(inp, a.temperature, a.repeats, grpo_loss_torch, grad_path)
        print("torch.compile ...", flush=True)
        try:
            compiled = torch.compile(grpo_loss_torch)
            results["torch.compile"] = run_torch(inp, a.temperature, a.repeats, compiled, grad_path)
        except Exception as e:  # e.g. no working C++ compiler for Inductor
            print(f"torch.compile failed: {type(e).__name__}: {e}")
            results["torch.compile"] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        os.remove(grad_path)
        os.rmdir(os.path.dirname(grad_path))

    ref = results["jax jit"]["loss"]
    print(f"\nloss (jax) = {ref:.8f}")
    for name, r in results.items():
        if name == "jax jit" or "error" in r:
            continue
        diff = max(abs(r["loss"] - ref), abs(r["loss_bwd"] - ref))
        grad_diff = r["grad_max_abs_diff_vs_jax"]
        print(f"{name}: loss max abs diff vs jax {diff:.2e}, grad max abs diff vs jax {grad_diff:.2e}")
        assert diff <= 1e-4 * max(abs(ref), 1e-6), f"{name} disagrees with jax on the loss: {diff}"
    print_table(results, logits_bytes)
    print(f"load average at the end {os.getloadavg()[0]:.2f} (other processes on the machine disturb the timings)")
    for name in ("torch eager", "torch.compile"):
        if "error" not in results[name]:
            for ph in ("fwd", "fwd+bwd"):
                results[name][ph]["ratio_vs_jax"] = results[name][ph]["median_s"] / results["jax jit"][ph]["median_s"]
    if a.json:
        meta = dict(batch=B, seq=T, vocab=V, repeats=a.repeats, temperature=a.temperature, jax=jax.__version__,
                    torch=torch.__version__, logits_bytes=logits_bytes,
                    cpu=platform.processor() or platform.machine(), loadavg_end=os.getloadavg())
        with open(a.json, "w") as f:
            json.dump(dict(config=meta, results=results), f, indent=2)


if __name__ == "__main__":
    main()
