"""An end-to-end run of the functional core on a synthetic bandit: RL from grouped comparison.

Each prompt has a fixed set of candidate answers with hidden qualities. A tabular softmax policy
samples ``n`` answers per prompt; a simulated GRM with a first-position bias, score noise and a few
malformed outputs writes ``Scores: \\boxed{a, b}`` for every ordered pair; ``parse_scores`` reads the
verdicts, ``grouped_comparison`` turns them into S(y_i), GRPO advantages and the PPO clip loss with a
k3 KL to the initial policy train it with optax. It exercises what exists before the model-backed
trainer, and shows the policy's expected quality rise while the position bias cancels.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grlhf.errors import UserError, cli_main
from grlhf.reward import parse_scores
from grlhf.rl import grouped_comparison, grpo_advantages, kl_penalty, logprobs_and_entropy, ppo_clip_loss


@dataclass
class DemoConfig:
    prompts: int = 64  # synthetic prompts, each with `answers` candidates
    answers: int = 8
    batch_prompts: int = 16  # prompts per step
    n: int = 5  # samples per prompt (the paper's default)
    steps: int = 100
    ppo_epochs: int = 2
    lr: float = 0.05
    kl_coef: float = 0.02
    kl_kind: str = "low_var_kl"
    clip_ratio: float = 0.2
    both_orders: bool = True
    judge_noise: float = 1.0  # std of the simulated GRM's score noise
    judge_first_bias: float = 1.5  # points the simulated GRM adds to whichever answer it reads first
    judge_malformed: float = 0.05  # fraction of judgments with no parseable \boxed{}
    seed: int = 0
    out_dir: Optional[str] = None  # where metrics.jsonl goes; default runs/demo-<time>


def simulated_judgments(quality: np.ndarray, samples: np.ndarray, cfg: DemoConfig, rng: np.random.Generator):
    """GRM texts for each group's requested ordered pairs, parsed back to ``(scores, valid, requested)``."""
    groups, k = samples.shape
    requested = ~np.eye(k, dtype=bool) if cfg.both_orders else np.triu(np.ones((k, k), bool), 1)
    scores = np.zeros((groups, k, k, 2), np.float32)
    valid = np.zeros((groups, k, k), bool)
    for g in range(groups):
        for i, j in zip(*np.nonzero(requested)):
            first = quality[g, samples[g, i]] + cfg.judge_first_bias + rng.normal(0, cfg.judge_noise)
            second = quality[g, samples[g, j]] + rng.normal(0, cfg.judge_noise)
            a, b = (int(np.clip(round(x), 1, 10)) for x in (first, second))
            text = f"Analysis: ...\nScores: \\boxed{{{a}, {b}}}"
            if rng.random() < cfg.judge_malformed:
                text = f"Scores: {a} and {b}"  # no box: the judgment is masked, not zeroed
            parsed = parse_scores(text)
            if parsed is not None:
                scores[g, i, j] = parsed
                valid[g, i, j] = True
    return scores, valid, requested


def _loss(logits, tokens, old_logp, ref_logp, advantages, mask, cfg: DemoConfig):
    logp, ent = logprobs_and_entropy(logits, tokens)
    pg_total, pg_denom, metrics = ppo_clip_loss(
        logp, old_logp, advantages, mask, clip_low=cfg.clip_ratio, clip_high=cfg.clip_ratio
    )
    kl = kl_penalty(logp, ref_logp, cfg.kl_kind)
    kl_mean = jnp.sum(kl * mask) / jnp.sum(mask)
    metrics = dict(metrics, kl=kl_mean, entropy=jnp.sum(ent * mask) / jnp.sum(mask))
    return pg_total / pg_denom + cfg.kl_coef * kl_mean, metrics


def run(cfg: DemoConfig, log=print) -> list[dict[str, Any]]:
    """Train the bandit policy; return the per-step metrics (also written as JSONL)."""
    rng = np.random.default_rng(cfg.seed)
    quality = rng.uniform(2.0, 9.0, (cfg.prompts, cfg.answers)).astype(np.float32)
    best = quality.argmax(-1)
    params = jnp.asarray(rng.normal(0, 0.1, (cfg.prompts, cfg.answers)).astype(np.float32))
    ref_params = params
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(1, cfg.steps // 10), cfg.steps * cfg.ppo_epochs)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, prompt_ids, tokens, old_logp, ref_logp, advantages):
        mask = jnp.ones(tokens.shape, jnp.float32)
        logits_of = lambda p: p[prompt_ids][:, None, :]  # noqa: E731  one-token responses
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: _loss(logits_of(p), tokens, old_logp, ref_logp, advantages, mask, cfg), has_aux=True
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, dict(metrics, loss=loss)

    def expected_quality(p):
        return float(np.mean(np.sum(np.asarray(jax.nn.softmax(p)) * quality, -1)))

    out_dir = Path(cfg.out_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    history: list[dict[str, Any]] = []
    key = jax.random.key(cfg.seed)
    log(f"[demo] {cfg.prompts} prompts x {cfg.answers} answers; optimum {quality.max(-1).mean():.3f}, "
        f"start {expected_quality(params):.3f}; metrics -> {out_dir / 'metrics.jsonl'}")
    with open(out_dir / "metrics.jsonl", "w") as sink:
        for step in range(cfg.steps):
            key, k_prompts, k_samples = jax.random.split(key, 3)
            prompt_ids = jax.random.choice(k_prompts, cfg.prompts, (cfg.batch_prompts,), replace=False)
            samples = jax.random.categorical(k_samples, params[prompt_ids], shape=(cfg.n, cfg.batch_prompts)).T
            samples_np, prompts_np = np.asarray(samples), np.asarray(prompt_ids)
            pair_scores, pair_valid, requested = simulated_judgments(quality[prompts_np], samples_np, cfg, rng)
            S, _ = grouped_comparison(pair_scores, pair_valid, both_orders=cfg.both_orders)
            group_ids = jnp.repeat(jnp.arange(cfg.batch_prompts), cfg.n)
            advantages = grpo_advantages(S.reshape(-1), group_ids)

            rows = jnp.repeat(prompt_ids, cfg.n)
            tokens = samples.reshape(-1, 1)
            sampled_logp = lambda p: jnp.take_along_axis(jax.nn.log_softmax(p[rows]), tokens, -1)  # noqa: E731
            old_logp, ref_logp = sampled_logp(params), sampled_logp(ref_params)
            for _ in range(cfg.ppo_epochs):
                params, opt_state, metrics = update(params, opt_state, rows, tokens, old_logp, ref_logp, advantages)

            judged = pair_valid & requested
            record = {
                "step": step + 1,
                "sample_quality": float(quality[prompts_np[:, None], samples_np].mean()),
                "expected_quality": expected_quality(params),
                "greedy_best_fraction": float(np.mean(np.asarray(params).argmax(-1) == best)),
                "reward_mean": float(S.mean()),
                "judge_first_minus_second": float(pair_scores[..., 0][judged].mean() - pair_scores[..., 1][judged].mean()),
                "judge_invalid_fraction": float(1.0 - judged.sum() / (requested.sum() * cfg.batch_prompts)),
                **{name: float(value) for name, value in metrics.items()},
            }
            history.append(record)
            sink.write(json.dumps(record) + "\n")
            if step == 0 or (step + 1) % 10 == 0 or step + 1 == cfg.steps:
                log(f"[demo] step {step + 1:4d}  expected quality {record['expected_quality']:.3f}  "
                    f"greedy=best {record['greedy_best_fraction']:.2f}  kl {record['kl']:.4f}  "
                    f"judge first-second {record['judge_first_minus_second']:+.2f}")
    return history


def parse_overrides(args: list[str]) -> DemoConfig:
    """``key=value`` arguments -> ``DemoConfig`` (typed by OmegaConf; an unknown key is named)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [arg for arg in args if "=" not in arg]
    if bad:
        raise UserError(f"expected key=value arguments, got {bad}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DemoConfig), OmegaConf.from_dotlist(list(args)))
    except OmegaConfBaseException as error:
        raise UserError(f"{error.msg if hasattr(error, 'msg') else error}") from None
    return OmegaConf.to_object(merged)


def demo(args: list[str]) -> int:
    """The command line's work; ``main`` adds the error handling (``grlhf.errors.cli_main``)."""
    history = run(parse_overrides(args))
    first, last = history[0], history[-1]
    print(f"[demo] done: expected quality {first['expected_quality']:.3f} -> {last['expected_quality']:.3f}, "
          f"greedy=best {first['greedy_best_fraction']:.2f} -> {last['greedy_best_fraction']:.2f}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m grlhf.demo [key=value ...] [--debug]``: a bad argument is one line on stderr, exit 2."""
    return cli_main("grlhf.demo", demo, argv)


if __name__ == "__main__":
    raise SystemExit(main())
