"""Stage 1: the generative reward model from RL (``trainer.stage=grm``) and its warm start (``sft``).

GRM step: a batch of preference pairs, each shown in a random order -> ``rollout.n`` sampled judgments
per pair -> the rule reward of each -> GRPO advantages over the judgments of a pair -> PPO updates with
a KL loss to the frozen warm-start model. SFT step: the token NLL of judgment traces (the synthetic
task's traces; the paper's GRM+SFT baseline on real data).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhf.config import Config, ConfigError
from grlhf.data.iteration import EpochIterator
from grlhf.reward.prompt import judge_template
from grlhf.rl import grpo_advantages, rloo_advantages
from grlhf.rollout.jax_sampler import SamplingParams
from grlhf.trainer import distributed
from grlhf.trainer.batches import encode_micro_batches, train_batches
from grlhf.trainer.judging import evaluate_judge, judge_case, judgment_rewards, sample_swaps, trace_example
from grlhf.trainer.loop import Phase, Run
from grlhf.trainer.optim import make_optimizer
from grlhf.trainer.step import LossConfig, accumulate_and_update

PHASE_CODES = {"sft": 1, "grm": 2, "policy": 3, "rm": 4}


class LazyItems(Sequence):
    """``make(index)`` for ``index`` in ``range(start, start + count)``, built on access (the synthetic task)."""

    def __init__(self, make, count: int, start: int = 0):
        self.make, self.count, self.start = make, count, start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return self.make(self.start + (i % self.count))


def preference_data(cfg: Config) -> tuple[Sequence[Any], Sequence[Any], Sequence[dict]]:
    """``(train pairs, held-out pairs, warm-start trace items)``; pairs are ``PreferencePair``s."""
    from grlhf.data.loaders import PreferencePair, load_preference_pairs

    data = cfg.data
    if data.source == "synthetic":
        from grlhf.data import synthetic

        scfg = synthetic.SyntheticConfig(seed=data.seed, image_size=data.image_size, max_shapes=data.max_shapes,
                                         num_pairs=data.num_train, grm_error_rate=data.grm_error_rate,
                                         question_kinds=tuple(data.question_kinds))

        def pair(i: int) -> PreferencePair:
            item = synthetic.preference_pair(scfg, i)
            better, worse = ((item["response_1"], item["response_2"]) if item["overall_response"] == 1
                             else (item["response_2"], item["response_1"]))
            return PreferencePair(str(i), item["image"], item["question"], better, worse)

        traces = LazyItems(lambda i: synthetic.grm_trace(scfg, i), data.num_train)
        return LazyItems(pair, data.num_train), LazyItems(pair, data.num_eval, start=data.num_train), traces
    pairs, report = load_preference_pairs(data.train_files, data.format, on_bad_row=data.on_bad_row)
    if data.eval_files:
        held_out, _ = load_preference_pairs(data.eval_files, data.format, on_bad_row=data.on_bad_row)
    else:
        held_out, pairs = pairs[len(pairs) - data.num_eval:], pairs[:len(pairs) - data.num_eval]
    if not pairs:
        raise ConfigError(f"data.train_files={data.train_files}: no usable preference pairs ({report.summary()})")
    return pairs, held_out, []


def _advantages(rewards: np.ndarray, group_ids: np.ndarray, cfg: Config) -> np.ndarray:
    algo = cfg.algorithm
    if algo.advantage == "rloo":
        return np.asarray(rloo_advantages(jnp.asarray(rewards), jnp.asarray(group_ids)))
    norm = algo.norm_adv_by_std and algo.advantage == "grpo"
    return np.asarray(grpo_advantages(jnp.asarray(rewards), jnp.asarray(group_ids), norm_by_std=norm))


def _optimizer(run: Run, lr: float, steps: int, warmup_ratio: float):
    o = run.cfg.optimizer
    tx, schedule = make_optimizer(lr, steps, weight_decay=o.weight_decay, warmup_ratio=warmup_ratio,
                                  schedule=o.schedule, min_lr_ratio=o.min_lr_ratio, b1=o.b1, b2=o.b2, eps=o.eps,
                                  max_grad_norm=o.max_grad_norm)
    return nnx.Optimizer(run.model, tx, wrt=nnx.Param), schedule


def _iterator(run: Run, count: int, batch_size: int) -> EpochIterator:
    import jax

    return EpochIterator(count, batch_size, seed=run.cfg.data.seed, process_index=jax.process_index(),
                         process_count=jax.process_count())


def _buckets(run: Run) -> dict:
    return {"length_buckets": run.cfg.data.length_buckets, "patch_buckets": run.cfg.data.patch_buckets}


def eval_fn(run: Run, sampler, held_out: Sequence[Any]):
    """Held-out pairwise accuracy of greedy judgments (both orders), parse failures, position bias."""
    cfg = run.cfg
    template = judge_template(cfg.reward.template)
    return lambda: evaluate_judge(sampler, held_out, template=template, max_tokens=cfg.rollout.max_tokens,
                                  principles=cfg.reward.principles)


def sft_phase(run: Run, traces: Sequence[dict], *, evaluate=None) -> Phase:
    """Supervised warm start on judgment traces (token-mean NLL)."""
    cfg = run.cfg
    if not traces:
        raise ConfigError("the sft warm start needs judgment traces; data.source=synthetic provides them "
                          "(real preference files have none: set sft.steps=0)")
    template = judge_template(cfg.reward.template)
    optimizer, schedule = _optimizer(run, cfg.sft.lr, cfg.sft.steps, cfg.sft.warmup_ratio)
    iterator = _iterator(run, len(traces), cfg.sft.batch_size)
    loss_cfg = LossConfig(kind="sft")

    def step_fn(step: int) -> dict:
        indices = distributed.gather_indices(iterator.next_indices())
        examples = [trace_example(traces[i], template=template) for i in indices]
        conversations, texts = [e[0] for e in examples], [e[1] for e in examples]
        host = encode_micro_batches(run.processor, conversations, texts, cfg.sft.micro_batch_size, **_buckets(run))
        batches, _ = train_batches(run.model, host, need_old=False, mesh=run.mesh)
        result = accumulate_and_update(run.model, optimizer, batches, loss_cfg)
        return {**result.metrics, "lr": float(schedule(step)), "updates_skipped": float(not result.applied),
                "epoch": float(iterator.epoch)}

    return Phase("sft", cfg.sft.steps, step_fn, optimizer, iterator, evaluate, cfg.trainer.eval_every)


def grm_phase(run: Run, sampler, pairs: Sequence[Any], reference, total_steps: int, *, evaluate=None) -> Phase:
    """RL of the GRM with the rule reward (paper §3, stage 1)."""
    cfg = run.cfg
    template = judge_template(cfg.reward.template)
    optimizer, schedule = _optimizer(run, cfg.optimizer.lr, total_steps, cfg.optimizer.warmup_ratio)
    iterator = _iterator(run, len(pairs), cfg.trainer.batch_size)
    algo, m = cfg.algorithm, cfg.rollout.n
    loss_cfg = LossConfig(kind="ppo", temperature=cfg.rollout.temperature, clip_low=algo.clip_ratio_low,
                          clip_high=algo.clip_ratio_high, dual_clip=algo.clip_ratio_c, agg=algo.loss_agg_mode,
                          kl_coef=algo.kl_coef if reference is not None else 0.0, kl_type=algo.kl_type,
                          entropy_coef=algo.entropy_coef, agg_scale=float(cfg.rollout.max_tokens))

    def step_fn(step: int) -> dict:
        indices = distributed.gather_indices(iterator.next_indices())
        rng = np.random.default_rng([cfg.trainer.seed, PHASE_CODES["grm"], step])
        cases = [judge_case(pairs[i], bool(s), template=template, principles=cfg.reward.principles)
                 for i, s in zip(indices, sample_swaps(rng, len(indices)))]
        began = time.perf_counter()
        sampling = SamplingParams(n=m, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                  top_k=cfg.rollout.top_k, max_tokens=cfg.rollout.max_tokens,
                                  seed=int(rng.integers(2**31)))
        completions = [c for group in sampler.generate([c.conversation for c in cases], sampling) for c in group]
        rollout_time = time.perf_counter() - began
        preferred = np.repeat([c.preferred for c in cases], m)
        rewards, failures = judgment_rewards([c.text for c in completions], preferred, cfg.reward.rule)
        group_ids = np.repeat(np.arange(len(cases)), m)
        advantages = _advantages(rewards, group_ids, cfg)
        conversations = [c.conversation for c in cases for _ in range(m)]
        host = encode_micro_batches(run.processor, conversations, [c.token_ids for c in completions],
                                    algo.micro_batch_size, **_buckets(run))
        batches, gap = train_batches(run.model, host, advantages=advantages, temperature=cfg.rollout.temperature,
                                     reference=reference, sampler_logprobs=[c.logprobs for c in completions],
                                     use_sampler_logprobs=cfg.rollout.logprobs == "sampler", mesh=run.mesh)
        updates = _ppo_updates(run, optimizer, batches, loss_cfg, len(completions))
        lengths = np.array([len(c.token_ids) for c in completions], np.float32)
        grouped = rewards.reshape(len(cases), m)
        return {**updates, **gap, "lr": float(schedule(step)), "reward_mean": float(rewards.mean()),
                "reward_std": float(rewards.std()), "advantage_mean": float(advantages.mean()),
                "advantage_std": float(advantages.std()), "advantage_max": float(advantages.max()),
                "advantage_min": float(advantages.min()), "parse_failures": float(failures),
                "zero_std_groups": float(np.mean(grouped.std(axis=1) == 0)),
                "response_length": float(lengths.mean()), "response_length_max": float(lengths.max()),
                "truncated": float(np.mean([c.finish_reason == "length" for c in completions])),
                "rollout_time": rollout_time, "rollout_tokens_per_s": float(lengths.sum() / max(rollout_time, 1e-9)),
                "epoch": float(iterator.epoch)}

    return Phase("grm", total_steps, step_fn, optimizer, iterator, evaluate, cfg.trainer.eval_every)


def _ppo_updates(run: Run, optimizer, batches, loss_cfg: LossConfig, rows: int) -> dict[str, float]:
    """``ppo_epochs`` passes over mini-batches of the rollout batch; metrics averaged over the updates."""
    algo = run.cfg.algorithm
    per_update = max((algo.mini_batch_size or rows) // algo.micro_batch_size, 1)
    totals: dict[str, float] = {}
    count = skipped = 0
    for _ in range(algo.ppo_epochs):
        for start in range(0, len(batches), per_update):
            result = accumulate_and_update(run.model, optimizer, batches[start:start + per_update], loss_cfg)
            skipped += not result.applied
            count += 1
            for key, value in result.metrics.items():
                totals[key] = totals.get(key, 0.0) + value
    return {**{k: v / count for k, v in totals.items()}, "updates": float(count), "updates_skipped": float(skipped)}


__all__ = ["LazyItems", "PHASE_CODES", "eval_fn", "grm_phase", "preference_data", "sft_phase"]
